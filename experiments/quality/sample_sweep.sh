#!/usr/bin/env bash
# Sampling-only variants of one trained workdir, each scored by experiments/compute_gap.py on the
# cached AR ladder of LADDER_STEPS diffusion steps (experiments/quality/README.md, fourth round).
# Usage: bash experiments/quality/sample_sweep.sh WORKDIR NAME=FIELD=VALUE[,FIELD=VALUE...] ...
#   e.g. bash experiments/quality/sample_sweep.sh workdirs/q1500/ce_prior_slope_warp_pos1_seed0 \
#            lt09=logit_temperature=0.9 ddim=sampler=ddim
#   Each variant writes WORKDIR/cg_NAME/ (compute_gap.md, .json, .png); SEED=1 changes the sampling
#   seed, NUM_SAMPLES (200) the number of samples, RAW=1 samples the raw parameters (not the EMA).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORKDIR="$1"
shift
LADDER=$(.venv/bin/python -c "
from cdm_jax import flops; from configs import wordnet_mse as wordnet
print(${LADDER_STEPS:-300} * flops.diffusion_train_flops(wordnet.get_config())['train'])")
for variant in "$@"; do
  name="${variant%%=*}"
  sets=()
  IFS=',' read -r -a fields <<< "${variant#*=}"
  for field in "${fields[@]}"; do sets+=(--set "$field"); done
  .venv/bin/python experiments/compute_gap.py --workdir="$WORKDIR" --ladder_flops="$LADDER" \
      --num_samples="${NUM_SAMPLES:-200}" --seed="${SEED:-0}" ${RAW:+--raw_params} "${sets[@]}" \
      --out="$WORKDIR/cg_$name" 2>&1 | grep -E "^\| diffusion|compute gap" || true
  echo "== $name"
done
