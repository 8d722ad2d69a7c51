#!/usr/bin/env bash
# Delete the TPU VM (its local disks go with it; keep --workdir on GCS / NFS).
#
#   bash tpu_scripts/delete.sh --name my-v4-32 --zone us-central2-b [--dry-run]
source "$(dirname "$0")/common.sh"
parse_common "$@"
[[ ${#REST[@]} -eq 0 ]] || usage_error "unknown flag ${REST[0]} (allowed: the common flags)"
gc compute tpus tpu-vm delete "$NAME" --quiet
