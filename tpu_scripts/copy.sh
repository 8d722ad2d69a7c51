#!/usr/bin/env bash
# Copy this checkout (tracked and untracked files, not .venv / runs / caches) to ~/sortedjax on every worker.
#
#   bash tpu_scripts/copy.sh --name my-v4-32 --zone us-central2-b [--src DIR] [--dry-run]
source "$(dirname "$0")/common.sh"
parse_common "$@"
SRC=$(cd "$(dirname "$0")/.." && pwd)
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --src) SRC=${2:?--src needs a value}; shift 2 ;;
    *) usage_error "unknown flag $1 (allowed: --src and the common flags)" ;;
  esac
done
[[ -d "$SRC" ]] || usage_error "--src $SRC is not a directory"
TAR=${TMPDIR:-/tmp}/sortedjax-src.tar.gz
if [[ $DRY_RUN == 1 ]]; then
  echo "tar -czf $TAR -C $SRC --exclude=.venv --exclude=runs --exclude=.git --exclude=__pycache__ ."
else
  tar -czf "$TAR" -C "$SRC" --exclude=.venv --exclude=runs --exclude=.git --exclude=__pycache__ .
fi
gc compute tpus tpu-vm scp "$TAR" "$NAME:sortedjax-src.tar.gz" --worker=all
on_all_workers "mkdir -p ~/sortedjax && tar -xzf ~/sortedjax-src.tar.gz -C ~/sortedjax"
