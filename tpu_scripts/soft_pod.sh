#!/usr/bin/env bash
# Sorted LLaMA (SoFT vs SFT, SFT+ICT) on every worker of a Cloud TPU VM pod, resuming after preemption.
#
#   TPU_NAME=my-v4-64 ZONE=us-central2-b bash tpu_scripts/soft_pod.sh
#
# Environment (defaults in brackets):
#   TPU_NAME, ZONE            the TPU VM (required)
#   PROJECT                   gcloud project [gcloud's default]
#   REPO_URL [git remote of this checkout]   BRANCH [main]
#   WORKDIR  [gs-fuse or local dir on every worker: /home/$USER/runs/soft]
#   MODEL    [meta-llama/Llama-2-13b-hf]   DATASET [alpaca:tatsu-lab/alpaca]   EVAL [triviaqa]
#   MESH     [all = FSDP over every chip of the pod; or data:..,fsdp:..,tensor:..]     EXTRA_ARGS [extra flags for experiments.soft]
#   MAX_RETRIES [20]   retries after preemption / ssh failure; each retry resumes from the
#                      orbax checkpoints in WORKDIR (every phase has its own sub-workdir).
#
# Every worker runs the same command; experiments.soft calls jax.distributed.initialize()
# (--distributed), so the pod forms one JAX runtime and only process 0 writes results.
# Expected runtime on a v4-64 with LLaMA-2 13B, 2000 steps per phase: several hours.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_URL=${REPO_URL:-$(git config --get remote.origin.url || true)}
BRANCH=${BRANCH:-main}
WORKDIR=${WORKDIR:-/home/$USER/runs/soft}
MODEL=${MODEL:-meta-llama/Llama-2-13b-hf}
DATASET=${DATASET:-alpaca:tatsu-lab/alpaca}
EVAL=${EVAL:-triviaqa}
MESH=${MESH:-all}
EXTRA_ARGS=${EXTRA_ARGS:-}
MAX_RETRIES=${MAX_RETRIES:-20}

if [[ -z "$REPO_URL" ]]; then
  echo "set REPO_URL (no git remote found)" >&2
  exit 2
fi

ssh_all() {
  # shellcheck disable=SC2086
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command="$1"
}

# 1. Code and dependencies on every worker (idempotent).
ssh_all "set -e
  if [ ! -d ~/sortedjax ]; then git clone -b $BRANCH $REPO_URL ~/sortedjax; fi
  cd ~/sortedjax && git fetch -q origin $BRANCH && git checkout -q $BRANCH && git pull -q --ff-only
  python3 -m venv ~/sortedjax/.venv && ~/sortedjax/.venv/bin/pip install -q -e '.[tpu]'"

# 2. The experiment on all workers; the mesh defaults to FSDP over every chip of the pod.
RUN="set -o pipefail; cd ~/sortedjax && \
  .venv/bin/python -m experiments.soft --distributed --mesh=$MESH --workdir $WORKDIR \
    --model $MODEL --dataset $DATASET --eval-dataset $EVAL --dtype bfloat16 \
    --steps 2000 --batch-size 64 --grad-accum 4 --max-len 512 --max-response-len 256 --max-new-tokens 32 \
    --learning-rate 2e-5 --ict-steps 1000 --ict-learning-rate 1e-4 --eval-limit 500 $EXTRA_ARGS \
    2>&1 | tee -a $WORKDIR.log"

# 3. Resume after preemption: rerun the same command; every phase restores its checkpoint.
for attempt in $(seq 0 "$MAX_RETRIES"); do
  if ssh_all "$RUN"; then
    echo "done: results in $WORKDIR/results.json on worker 0"
    exit 0
  fi
  echo "attempt $attempt failed (preempted or ssh dropped); waiting for the TPU to be READY, then resuming" >&2
  until gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --format='value(state)' | grep -q READY; do
    sleep 60
  done
done
echo "gave up after $MAX_RETRIES retries" >&2
exit 1
