#!/usr/bin/env bash
# The 600-step, one-seed probe of experiments/quality/README.md (second round), scored on the
# 300-step AR ladder and judge. Usage: bash experiments/quality/run_600_probe.sh
cd "$(dirname "$0")/../.."
STEPS=600; ROOT=workdirs/q600
COMMON=(--config=configs/wordnet.py --config.train.num_train_steps=$STEPS --config.train.warmup_steps=60 --config.train.time_limit_minutes=0 --config.train.eval_every_steps=0 --config.train.sample_every_steps=0 --config.train.checkpoint_every_steps=$STEPS --config.seed=0)
CE="--config.model.output=logits_prior --config.model.normalize_embeddings=True --config.diffusion.rounding_weight=0.0"
WARP="--config.diffusion.time_warp=True --config.diffusion.importance_weight=False --config.diffusion.warp_follow=slope --config.sample.time_grid=warp"
.venv/bin/python -m cdm_jax.main "${COMMON[@]}" $CE $WARP --workdir=$ROOT/ce_prior_slope_warp_seed0 2>&1 | grep -E "step $STEPS:|Error"
.venv/bin/python -m cdm_jax.main "${COMMON[@]}" $CE $WARP --config.model.pos_init_std=1.0 --workdir=$ROOT/ce_prior_slope_warp_pos1_seed0 2>&1 | grep -E "step $STEPS:|Error"
for name in ce_prior_slope_warp ce_prior_slope_warp_pos1; do
  .venv/bin/python experiments/compute_gap.py --workdir=$ROOT/${name}_seed0 --ladder_flops=22435332096000.0 --num_samples=200 2>&1 | grep -v "^I1\|^W1\|it/s\]" | tail -3
  .venv/bin/python experiments/context_use.py --workdir=$ROOT/${name}_seed0 --times=0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.99 2>&1 | grep -v "^W\|WARNING" > $ROOT/${name}_seed0/context_use.txt
done
