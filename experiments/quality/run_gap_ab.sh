#!/usr/bin/env bash
# The quality A/B behind experiments/quality/README.md: two recipes x two seeds at equal training
# steps (equal FLOPs to within 1%), each scored by experiments/compute_gap.py on one shared AR
# ladder and judge. Usage: bash experiments/quality/run_gap_ab.sh [STEPS] [ROOT]
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS="${1:-300}"
ROOT="${2:-workdirs/quality}"
COMMON=(--config=configs/wordnet.py --config.train.num_train_steps="$STEPS"
        --config.train.warmup_steps=$((STEPS / 10)) --config.train.time_limit_minutes=0
        --config.train.eval_every_steps=0 --config.train.sample_every_steps=0
        --config.train.checkpoint_every_steps="$STEPS")
declare -A RECIPES=(
  [mse_rounding]=""
  [ce_output_prior]="--config.model.output=logits_prior --config.model.normalize_embeddings=True --config.diffusion.rounding_weight=0.0"
)
for seed in 0 1; do
  for name in mse_rounding ce_output_prior; do
    # shellcheck disable=SC2086
    .venv/bin/python -m cdm_jax.main "${COMMON[@]}" --config.seed="$seed" ${RECIPES[$name]} \
        --workdir="$ROOT/${name}_seed$seed" 2>&1 | grep -E "step $STEPS:|Resumed|Error" || true
  done
done
# One ladder for all: its 1x rung is the FLOPs of the MSE recipe's run.
LADDER=$(.venv/bin/python -c "
import sys; sys.path.insert(0, '.')
from cdm_jax import builders, flops
c = builders.load_config('$ROOT/mse_rounding_seed0'); print($STEPS * flops.diffusion_train_flops(c)['train'])")
for seed in 0 1; do
  for name in mse_rounding ce_output_prior; do
    .venv/bin/python experiments/compute_gap.py --workdir="$ROOT/${name}_seed$seed" \
        --ladder_flops="$LADDER" --num_samples="${NUM_SAMPLES:-200}" 2>&1 | grep -v "^I1\|^W1\|it/s\]" | tail -14
  done
done
