#!/usr/bin/env bash
# On every worker: clone (or update) the repository, make a venv, pip install -e ".[tpu]".
#
#   bash tpu_scripts/setup.sh --name my-v4-32 --zone us-central2-b --repo https://github.com/you/sortedjax [--branch main] [--dry-run]
#
# Idempotent: rerunning updates the checkout and the install. Use copy.sh instead of --repo for
# uncommitted code.
source "$(dirname "$0")/common.sh"
parse_common "$@"
REPO=${REPO_URL:-} BRANCH=${BRANCH:-main} EXTRA=tpu
set -- "${REST[@]+"${REST[@]}"}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repo) REPO=${2:?--repo needs a value}; shift 2 ;;
    --branch) BRANCH=${2:?--branch needs a value}; shift 2 ;;
    --extra) EXTRA=${2:?--extra needs a value}; shift 2 ;;
    *) usage_error "unknown flag $1 (allowed: --repo, --branch, --extra and the common flags)" ;;
  esac
done
CLONE=""
if [[ -n "$REPO" ]]; then
  CLONE="if [ ! -d ~/sortedjax/.git ]; then git clone -q -b $BRANCH $REPO ~/sortedjax; fi; \
cd ~/sortedjax && git fetch -q origin $BRANCH && git checkout -q $BRANCH && git pull -q --ff-only; "
fi
on_all_workers "set -e; ${CLONE}cd ~/sortedjax && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
&& .venv/bin/pip install -q -e '.[$EXTRA]' && .venv/bin/python -c 'import jax; print(jax.process_index(), jax.devices())'"
