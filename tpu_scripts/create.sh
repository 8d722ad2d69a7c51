#!/usr/bin/env bash
# Create a TPU VM (a pod slice: every worker gets the same software image).
#
#   bash tpu_scripts/create.sh --name my-v4-32 --zone us-central2-b --type v4-32 [--spot] [--dry-run]
#
# --type        accelerator type, e.g. v4-32, v5litepod-16, v5p-32 [v4-32]
# --version     TPU software version [tpu-ubuntu2204-base]
# --spot        preemptible (spot) capacity; pair with preempt_loop.sh
source "$(dirname "$0")/common.sh"
parse_common "$@"
TYPE=v4-32 VERSION=tpu-ubuntu2204-base SPOT=()
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --type) TYPE=${2:?--type needs a value}; shift 2 ;;
    --version) VERSION=${2:?--version needs a value}; shift 2 ;;
    --spot) SPOT=(--spot); shift ;;
    *) usage_error "unknown flag $1 (allowed: --type, --version, --spot and the common flags)" ;;
  esac
done
[[ "$TYPE" =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] || usage_error "--type $TYPE is not an accelerator type such as v4-32 or v5litepod-16"
gc compute tpus tpu-vm create "$NAME" "--accelerator-type=$TYPE" "--version=$VERSION" "${SPOT[@]+"${SPOT[@]}"}"
