#!/usr/bin/env bash
# The main job: install, fetch WordNet (no root needed), train the CPU demo, sample, evaluate.
# Rerunning resumes training from the last checkpoint in $WORKDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${WORKDIR:-workdirs/wordnet}"
bash scripts/setup_venv.sh eval
.venv/bin/python -m cdm_jax.data.corpora --fetch_wordnet
.venv/bin/cdm-train --config=configs/wordnet.py --workdir="$WORKDIR" "$@"
echo "== 10 samples (sampler, steps and clamp from the config's sample.*; seed 0) =="
.venv/bin/cdm-generate --workdir="$WORKDIR" --num_samples=10 --seed=0
if [ -z "${SKIP_EVAL:-}" ]; then
  echo "== evaluation (200 samples) =="
  .venv/bin/cdm-evaluate --workdir="$WORKDIR" --num_samples=200
fi
