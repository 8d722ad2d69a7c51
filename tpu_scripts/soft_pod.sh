#!/usr/bin/env bash
# Sorted LLaMA (SoFT vs SFT, SFT+ICT) on LLaMA-2 13B on every worker of a TPU pod, resumed after
# every preemption (preempt_loop.sh: recreate, setup, rerun; each phase restores its checkpoint).
#
#   bash tpu_scripts/soft_pod.sh --name my-v4-32 --zone us-central2-b --type v4-32 \
#       --repo https://github.com/you/sortedjax --workdir /mnt/gcs/runs/soft [--dry-run]
#
# --workdir must outlive the VM (GCS-fuse or NFS mount on every worker). Memory: see
# `python -m experiments.plan --model llama2-13b --mesh data:1,fsdp:8 --seq 2048 --batch 8` (full remat).
# Expected runtime on a v4-32 with 2000 steps per phase: several hours.
set -euo pipefail
HERE=$(dirname "$0")
WORKDIR=/mnt/runs/soft MESH=all PASS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workdir) WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
    --mesh) MESH=${2:?--mesh needs a value}; shift 2 ;;
    *) PASS+=("$1"); shift ;;
  esac
done
exec bash "$HERE/preempt_loop.sh" "${PASS[@]+"${PASS[@]}"}" -- -m experiments.soft --distributed "--mesh=$MESH" \
  --workdir "$WORKDIR" --model meta-llama/Llama-2-13b-hf --dataset alpaca:tatsu-lab/alpaca --eval-dataset triviaqa \
  --dtype bfloat16 --remat full --steps 2000 --batch-size 64 --grad-accum 8 --max-len 512 --max-response-len 256 \
  --max-new-tokens 32 --learning-rate 2e-5 --ict-steps 1000 --ict-learning-rate 1e-4 --eval-limit 500
