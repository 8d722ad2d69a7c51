#!/usr/bin/env bash
# Run one experiment command on every worker at once (one JAX runtime over the whole pod).
#
#   bash tpu_scripts/run.sh --name my-v4-32 --zone us-central2-b [--log FILE] [--dry-run] -- \
#       -m experiments.soft --distributed --mesh=all --workdir gs-or-nfs/runs/soft ...
#
# Everything after "--" goes to ~/sortedjax/.venv/bin/python on each worker. The experiment must
# pass --distributed (jax.distributed.initialize); only process 0 writes results.
source "$(dirname "$0")/common.sh"
LOG=run.log
ARGS=()
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--" ]]; then ARGS=("${@:i+1}"); set -- "${@:1:i-1}"; break; fi
done
parse_common "$@"
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --log) LOG=${2:?--log needs a value}; shift 2 ;;
    *) usage_error "unknown flag $1 (allowed: --log and the common flags; the python arguments go after --)" ;;
  esac
done
[[ ${#ARGS[@]} -gt 0 ]] || usage_error "give the python arguments after --, e.g. -- -m experiments.soft --distributed"
PY=$(printf ' %q' "${ARGS[@]}")
on_all_workers "set -o pipefail; cd ~/sortedjax && .venv/bin/python$PY 2>&1 | tee -a ~/$LOG"
