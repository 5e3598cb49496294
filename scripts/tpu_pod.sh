#!/usr/bin/env bash
# Train on a TPU VM slice with one process per host (all workers run the same command).
#
#   TPU_NAME=cdm-pod ZONE=us-central2-b ACCELERATOR=v4-32 WORKDIR=gs://BUCKET/cdm/run \
#     bash scripts/tpu_pod.sh ACTION
#
# ACTION: create (reuses a slice of that name if it exists) | copy (this checkout's committed tree
# to every worker) | setup (venv with jax[tpu] and the gcs extra on every worker) | mount (with
# DATA=gs://BUCKET/FOLDER: that prepared corpus, read-only through gcsfuse, at MOUNT on every
# worker, default /mnt/owt/prepared, the folder configs/owt_1b.py names) | launch
# (training in the background on every worker, one log per worker) | tail (worker 0's log) |
# logs (the last lines of every worker's log) | stop (SIGTERM: all processes agree on a step,
# save one checkpoint and exit; rerun `launch` to resume) | delete | all (create, copy, setup,
# launch; mount too when DATA is set).
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (default v4-32), RUNTIME (default
# tpu-ubuntu2204-base), CONFIG (default configs/tpu_pod.py), WORKDIR (a gs:// path: every host
# must see the same checkpoints), EXTRA_FLAGS (more --config.x=y flags), SPOT=1 (a spot slice).
# DRY_RUN=1 prints the commands instead of running them.
# Before `create`, `launch` and `all` (dry runs included), `cdm-compile` compiles the config for
# ACCELERATOR's topology on this machine (libtpu: pip install 'cdm_jax[tpu]') and stops here when
# a function does not fit a chip; SKIP_COMPILE_CHECK=1 skips it, COMPILE_FUNCTIONS (default: all)
# names the functions to check.
set -euo pipefail
cd "$(dirname "$0")/.."

ACTION="${1:?usage: bash scripts/tpu_pod.sh create|copy|setup|mount|launch|tail|logs|stop|delete|all}"
TPU_NAME="${TPU_NAME:?set TPU_NAME}"
ZONE="${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/tpu_pod.py}"
WORKDIR="${WORKDIR:-}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
DATA="${DATA:-}"
MOUNT="${MOUNT:-/mnt/owt/prepared}"
REMOTE_DIR="cdm_jax"
LOG="train.log"

run() {
  if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

on_workers() {  # on_workers WORKERS COMMAND: one ssh per worker, in parallel (gcloud's --worker)
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}

compile_check() {  # the run compiled for the slice's chips here, before a chip is rented or used
  if [ "${SKIP_COMPILE_CHECK:-0}" = "1" ]; then
    return
  fi
  local cli=.venv/bin/cdm-compile extra=() functions=()
  [ -x "$cli" ] || cli=cdm-compile
  read -r -a extra <<< "$EXTRA_FLAGS"
  if [ -n "${COMPILE_FUNCTIONS:-}" ]; then
    functions=("--functions=$COMPILE_FUNCTIONS")
  fi
  echo "Compiling $CONFIG for $ACCELERATOR (cdm-compile; SKIP_COMPILE_CHECK=1 skips this)." >&2
  local log
  log="$(mktemp)"
  if ! "$cli" "--config=$CONFIG" "--topology=$ACCELERATOR" ${functions[@]+"${functions[@]}"} \
      ${extra[@]+"${extra[@]}"} > /dev/null 2> "$log"; then
    tail -n 1 "$log" >&2  # cdm-compile's one error line: which function, its bytes, the chip's
    rm -f "$log"
    exit 2
  fi
  rm -f "$log"
}

create() {
  if [ "${DRY_RUN:-0}" != "1" ] && gcloud compute tpus tpu-vm describe "$TPU_NAME" \
      --zone="$ZONE" > /dev/null 2>&1; then
    echo "Reusing the TPU VM slice $TPU_NAME."
    return
  fi
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME" ${SPOT:+--spot}
}

copy() {
  local folder archive
  if [ "${DRY_RUN:-0}" = "1" ]; then
    folder="TMPDIR"  # nothing is created in a dry run
  else
    folder="$(mktemp -d)"
    trap 'rm -rf "$folder"' EXIT
  fi
  archive="$folder/cdm_jax.tar.gz"
  run git archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:~/cdm_jax.tar.gz" --zone="$ZONE" \
      --worker=all
  on_workers all "tar xzf cdm_jax.tar.gz"  # over the old copy: its .venv stays
}

setup() {
  on_workers all "cd $REMOTE_DIR && bash scripts/setup_venv.sh gcs && \
.venv/bin/python -m pip install --quiet 'jax[tpu]'"
}

mount() {
  case "$DATA" in
    gs://*/*) ;;
    *) echo "DATA must name a prepared folder as gs://BUCKET/FOLDER, got '$DATA'." >&2; exit 2 ;;
  esac
  local bucket="${DATA#gs://}"
  local folder="${bucket#*/}"
  bucket="${bucket%%/*}"
  on_workers all "sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT && \
gcsfuse -o ro --implicit-dirs --only-dir $folder $bucket $MOUNT"
}

launch() {
  case "$WORKDIR" in
    gs://*) ;;
    *) echo "WORKDIR must be a gs:// path that every host reads and writes, got '$WORKDIR'." >&2
       exit 2 ;;
  esac
  # Each value is quoted for the remote shell (printf %q); EXTRA_FLAGS splits into words here.
  local extra=()
  read -r -a extra <<< "$EXTRA_FLAGS"
  local command
  command="cd $REMOTE_DIR && nohup .venv/bin/cdm-train --multihost $(printf '%q ' \
"--config=$CONFIG" "--workdir=$WORKDIR" ${extra[@]+"${extra[@]}"})> $LOG 2>&1 < /dev/null &"
  on_workers all "$command"
}

case "$ACTION" in
  create) compile_check; create ;;
  copy) copy ;;
  setup) setup ;;
  mount) mount ;;
  launch) compile_check; launch ;;
  tail) on_workers 0 "tail -n 50 -f $REMOTE_DIR/$LOG" ;;
  logs) on_workers all "echo == \$(hostname); tail -n 5 $REMOTE_DIR/$LOG" ;;
  stop) on_workers all "pkill -TERM -f cdm-train || true" ;;
  delete) run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  all) compile_check; create; copy; setup; if [ -n "$DATA" ]; then mount; fi; launch ;;
  *) echo "Unknown action '$ACTION'." >&2; exit 2 ;;
esac
