#!/usr/bin/env bash
# Keep a job running through preemptions: (re)create the TPU VM when it is gone or PREEMPTED,
# set it up, run the command on every worker; the experiment resumes from its latest orbax
# checkpoint in its --workdir (which must outlive the VM: a GCS-fuse or NFS path).
# On the preemption notice (SIGTERM) every worker finishes one agreed step, saves its checkpoint and
# exits with status 143 (sortedjax.train.Preempted); any nonzero status here means "run again", and
# only a zero one (the experiment finished) ends the loop. A run refused because another holds the
# workdir's train.lock also exits nonzero: the lock of a VM lost without notice goes stale after
# 2 minutes without heartbeat, so a few retries later the rerun takes it over.
#
#   bash tpu_scripts/preempt_loop.sh --name my-v4-32 --zone us-central2-b --type v4-32 \
#       --repo URL [--max-retries 20] [--dry-run] -- -m experiments.soft --distributed --workdir /mnt/runs/soft ...
#
# --dry-run prints the commands of one pass (check, delete + create, setup, run) and stops.
source "$(dirname "$0")/common.sh"
HERE=$(dirname "$0")
ARGS=()
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--" ]]; then ARGS=("${@:i+1}"); set -- "${@:1:i-1}"; break; fi
done
parse_common "$@"
TYPE=v4-32 REPO="" MAX_RETRIES=20
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --type) TYPE=${2:?--type needs a value}; shift 2 ;;
    --repo) REPO=${2:?--repo needs a value}; shift 2 ;;
    --max-retries) MAX_RETRIES=${2:?--max-retries needs a value}; shift 2 ;;
    *) usage_error "unknown flag $1 (allowed: --type, --repo, --max-retries and the common flags)" ;;
  esac
done
[[ ${#ARGS[@]} -gt 0 ]] || usage_error "give the python arguments after --"
[[ "$MAX_RETRIES" =~ ^[0-9]+$ ]] || usage_error "--max-retries must be a non-negative integer, got $MAX_RETRIES"
COMMON=(--name "$NAME" --zone "$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project "$PROJECT")
[[ $DRY_RUN == 1 ]] && COMMON+=(--dry-run)
REPO_FLAG=()
[[ -n "$REPO" ]] && REPO_FLAG=(--repo "$REPO")

state() {
  if [[ $DRY_RUN == 1 ]]; then
    gc compute tpus tpu-vm describe "$NAME" "--format=value(state)"
    echo PREEMPTED  # show the recreate path too
  else
    gc compute tpus tpu-vm describe "$NAME" "--format=value(state)" 2>/dev/null || echo MISSING
  fi
}

for attempt in $(seq 0 "$MAX_RETRIES"); do
  s=$(state | tail -n 1)
  [[ $DRY_RUN == 1 ]] && state | head -n 1
  if [[ "$s" != READY ]]; then
    echo "attempt $attempt: TPU $NAME is $s; recreating" >&2
    [[ "$s" != MISSING ]] && bash "$HERE/delete.sh" "${COMMON[@]}"
    bash "$HERE/create.sh" "${COMMON[@]}" --type "$TYPE" --spot
    bash "$HERE/setup.sh" "${COMMON[@]}" "${REPO_FLAG[@]+"${REPO_FLAG[@]}"}"
  fi
  if bash "$HERE/run.sh" "${COMMON[@]}" -- "${ARGS[@]}"; then
    [[ $DRY_RUN == 1 ]] || echo "done after $attempt restarts" >&2
    exit 0
  fi
  echo "attempt $attempt failed (preempted or ssh dropped); resuming from the latest checkpoint" >&2
  sleep 30
done
echo "gave up after $MAX_RETRIES retries" >&2
exit 1
