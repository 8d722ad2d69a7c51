# Shared by the tpu_scripts: flag parsing and a `gcloud` that prints instead of running under --dry-run.
# Flags every script takes:
#   --name NAME      the TPU VM (or $TPU_NAME)          --zone ZONE  (or $ZONE)
#   --project ID     gcloud project (or $PROJECT; default: gcloud's)
#   --dry-run        print each gcloud command (one line, prefixed "gcloud ") instead of running it
set -euo pipefail

NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
DRY_RUN=0
REST=()

usage_error() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# parse_common "$@": takes the shared flags, leaves the others in REST.
parse_common() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) NAME=${2:?--name needs a value}; shift 2 ;;
      --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
      --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  [[ -n "$NAME" ]] || usage_error "give --name NAME (or set TPU_NAME)"
  [[ -n "$ZONE" ]] || usage_error "give --zone ZONE (or set ZONE)"
}

# gc ARGS...: gcloud, or its command line under --dry-run.
gc() {
  local args=("$@" "--zone=$ZONE")
  [[ -n "$PROJECT" ]] && args+=("--project=$PROJECT")
  if [[ $DRY_RUN == 1 ]]; then
    printf 'gcloud'
    printf ' %q' "${args[@]}"
    printf '\n'
  else
    gcloud "${args[@]}"
  fi
}

# on_all_workers COMMAND: run a shell command on every worker of the TPU VM.
on_all_workers() {
  gc compute tpus tpu-vm ssh "$NAME" --worker=all "--command=$1"
}
