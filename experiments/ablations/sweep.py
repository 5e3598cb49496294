"""Ablations at a fixed small budget, one factor at a time around the demo recipe.

  python experiments/sweep.py --config=configs/wordnet_mse.py --sweep=experiments/ablations/sweep.py \
      --evaluate --num_samples=200

Set FULL_GRID = True for the full product (4 schedules x 2 losses x self-cond x clamp = 32 runs).
"""

import itertools

FULL_GRID = False
# A fixed step budget (not a time limit), so every variant gets the same training however busy the
# machine is; 500 steps are ~5.5 minutes on 2 idle cores.
BASE_OVERRIDES = {"train.num_train_steps": 500, "train.time_limit_minutes": 15.0,
                  "train.eval_every_steps": 0, "train.sample_every_steps": 0,
                  "train.checkpoint_every_steps": 250, "train.warmup_steps": 100}

SCHEDULES = ["cosine", "linear", "sqrt", "tan_d"]
LOSSES = {"mse_round": {"model.output": "x0", "diffusion.rounding_weight": 1.0},
          "ce_norm": {"model.output": "logits", "model.normalize_embeddings": True,
                      "diffusion.rounding_weight": 0.0}}
CLAMPS = ["soft", "none"]


def variant(schedule, loss, self_cond, clamp):
  name = f"{schedule}-{loss}-{'sc' if self_cond else 'nosc'}-{clamp}"
  return name, {"diffusion.schedule": schedule, **LOSSES[loss], "model.self_conditioning": self_cond,
                "sample.clamp": clamp}


def get_sweep():
  if FULL_GRID:
    return [variant(*v) for v in itertools.product(SCHEDULES, LOSSES, [True, False], CLAMPS)]
  base = ("cosine", "mse_round", True, "soft")
  out = [variant(*base)]
  for schedule in SCHEDULES[1:]:
    out.append(variant(schedule, *base[1:]))
  out.append(variant("cosine", "ce_norm", True, "soft"))
  out.append(variant("cosine", "mse_round", False, "soft"))
  out.append(variant("cosine", "mse_round", True, "none"))
  return out
