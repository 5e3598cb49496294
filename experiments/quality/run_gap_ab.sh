#!/usr/bin/env bash
# The quality A/Bs behind experiments/quality/README.md: recipes x two seeds at equal training
# steps (equal FLOPs to within 1%), each scored by experiments/compute_gap.py on one shared AR
# ladder and judge (its 1x rung: STEPS steps of configs/wordnet_mse.py's FLOPs). Recipes are overrides of
# configs/wordnet_mse.py (the demo until 2026-12-01), so they keep their meaning.
# Usage: bash experiments/quality/run_gap_ab.sh [STEPS] [ROOT] [RECIPE ...]
#   (default recipes: mse_rounding ce_output_prior; SEEDS="0 1" by default; LADDER_STEPS=N scores
#   on the ladder of N steps instead of STEPS, e.g. a longer run against a cached shorter ladder)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS="${1:-300}"
ROOT="${2:-workdirs/quality}"
shift $(( $# < 2 ? $# : 2 ))
NAMES=("${@:-mse_rounding ce_output_prior}")
read -r -a NAMES <<< "${NAMES[*]}"
COMMON=(--config=configs/wordnet_mse.py --config.train.num_train_steps="$STEPS"
        --config.train.warmup_steps=$((STEPS / 10)) --config.train.time_limit_minutes=0
        --config.train.eval_every_steps=0 --config.train.sample_every_steps=0
        --config.train.checkpoint_every_steps="$STEPS")
CE="--config.model.output=logits_prior --config.model.normalize_embeddings=True --config.diffusion.rounding_weight=0.0"
WARP="--config.diffusion.time_warp=True --config.diffusion.importance_weight=False --config.diffusion.warp_follow=slope --config.sample.time_grid=warp"
declare -A RECIPES=(
  [mse_rounding]=""
  [ce_output_prior]="$CE"
  [ce_prior_slope_warp]="$CE $WARP"
  [ce_prior_packed]="$CE --config.data.packing=True"
  [ce_prior_slope_warp_packed]="$CE $WARP --config.data.packing=True"
  [ce_prior_slope_warp_pos1]="$CE $WARP --config.model.pos_init_std=1.0"
  [ce_prior_slope_warp_pos1_lr2e3]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3"
  [ce_prior_slope_warp_pos1_lr3e3]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=3e-3"
  [ce_prior_slope_warp_pos1_lr2e3_b32]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3 --config.train.batch_size=32"
  [ce_prior_slope_warp_pos1_dim16]="$CE $WARP --config.model.pos_init_std=1.0 --config.model.embed_dim=16"
  [ce_prior_slope_warp_pos1_lr2e3_nocond]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3 --config.condition.prefix=0 --config.condition.suffix=0 --config.condition.spans=0"
  [ce_prior_slope_warp_pos1_lr2e3_deep10]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3 --config.model.num_layers=10 --config.model.width=192 --config.model.mlp_dim=768"
  [ce_prior_slope_warp_pos1_lr2e3_packed]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3 --config.data.packing=True"
  [ce_prior_slope_warp_pos1_lr2e3_dim128]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3 --config.model.embed_dim=128"
  [ce_prior_slope_warp_pos1_lr2e3_sc75]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3 --config.diffusion.self_cond_prob=0.75"
  [ce_prior_slope_warp_pos1_lr2e3_sc100]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3 --config.diffusion.self_cond_prob=1.0"
  [ce_prior_slope_warp_pos1_lr2e3_sc25]="$CE $WARP --config.model.pos_init_std=1.0 --config.train.learning_rate=2e-3 --config.diffusion.self_cond_prob=0.25"
)
for seed in ${SEEDS:-0 1}; do
  for name in "${NAMES[@]}"; do
    # shellcheck disable=SC2086
    .venv/bin/cdm-train "${COMMON[@]}" --config.seed="$seed" ${RECIPES[$name]} \
        --workdir="$ROOT/${name}_seed$seed" 2>&1 | grep -E "step $STEPS:|Resumed|Error" || true
  done
done
LADDER=$(.venv/bin/python -c "
from cdm_jax import flops; from configs import wordnet_mse as wordnet
print(${LADDER_STEPS:-$STEPS} * flops.diffusion_train_flops(wordnet.get_config())['train'])")
for seed in ${SEEDS:-0 1}; do
  for name in "${NAMES[@]}"; do
    .venv/bin/python experiments/compute_gap.py --workdir="$ROOT/${name}_seed$seed" \
        --ladder_flops="$LADDER" --num_samples="${NUM_SAMPLES:-200}" 2>&1 | grep -v "^I1\|^W1\|it/s\]" | tail -14
    .venv/bin/python experiments/context_use.py --workdir="$ROOT/${name}_seed$seed" \
        --times=0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.99 2>&1 | grep -v "^W\|WARNING" > "$ROOT/${name}_seed$seed/context_use.txt"
  done
done
