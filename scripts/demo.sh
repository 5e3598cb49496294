#!/usr/bin/env bash
# The main job: install, fetch WordNet (no root needed), train the CPU demo (configs/wordnet.py,
# diffusion over the embedding table; CONFIG=configs/wordnet_latent_cond.py for compressed latents),
# sample, continue prefixes, evaluate.
# Rerunning resumes training from the last checkpoint in $WORKDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${WORKDIR:-workdirs/wordnet}"
CONFIG="${CONFIG:-configs/wordnet.py}"
bash scripts/setup_venv.sh eval
.venv/bin/python -m cdm_jax.data.corpora --fetch_wordnet
.venv/bin/cdm-train --config="$CONFIG" --workdir="$WORKDIR" "$@"
echo "== 10 samples (sampler, steps and options from the config's sample.*; seed 0) =="
.venv/bin/cdm-generate --workdir="$WORKDIR" --num_samples=10 --seed=0
echo "== 3 continuations of each prefix (seed 0) =="
for prefix in "a small" "the act of" "He"; do
  .venv/bin/cdm-generate --workdir="$WORKDIR" --num_samples=3 --seed=0 --prefix="$prefix"
done
if [ -z "${SKIP_EVAL:-}" ]; then
  echo "== evaluation (200 samples) =="
  .venv/bin/cdm-evaluate --workdir="$WORKDIR" --num_samples=200
fi
