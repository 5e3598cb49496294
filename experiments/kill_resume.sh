#!/usr/bin/env bash
# Shows that `kill -9` loses nothing but the steps after the last checkpoint: trains the WordNet
# demo config, kills it hard once checkpoint CKPT exists, reruns the same command, and prints the
# logged steps of both runs.   usage: bash experiments/kill_resume.sh [WORKDIR] [CKPT]
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-workdirs/kill_resume}"
CKPT="${2:-100}"
rm -rf "$WORKDIR"
mkdir -p "$(dirname "$WORKDIR")"
cmd=(.venv/bin/python -m cdm_jax.main --config=configs/wordnet.py --workdir="$WORKDIR"
     --config.train.num_train_steps=$((CKPT + 100)) --config.train.checkpoint_every_steps="$CKPT"
     --config.train.log_every_steps=25 --config.train.eval_every_steps=0
     --config.train.sample_every_steps=0 --config.train.time_limit_minutes=0)
"${cmd[@]}" > "$WORKDIR.first.log" 2>&1 &
pid=$!
until [ -d "$WORKDIR/checkpoints/$CKPT" ] || ! kill -0 "$pid" 2>/dev/null; do sleep 1; done
sleep 8  # let it train past the checkpoint, so that work is lost
kill -9 "$pid" || true
wait "$pid" 2>/dev/null || true
echo "killed (-9) after checkpoint $CKPT; logged steps so far:"
grep -o '"step": [0-9]*' "$WORKDIR/metrics.jsonl" | tr '\n' ' '; echo
"${cmd[@]}" > "$WORKDIR.second.log" 2>&1
grep -E "Resumed|Starting" "$WORKDIR.second.log" | sed 's/^.*\] //'
echo "logged steps after rerunning the same command:"
grep -o '"step": [0-9]*' "$WORKDIR/metrics.jsonl" | tr '\n' ' '; echo
grep -o '"step": [0-9]*, "loss": [0-9.]*' "$WORKDIR/metrics.jsonl"
