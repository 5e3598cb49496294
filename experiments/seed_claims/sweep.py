"""The two pitfalls of jointly trained embeddings, and their fixes (issue: collapse / explosion).

  python experiments/sweep.py --config=configs/wordnet_mse.py --sweep=experiments/seed_claims/sweep.py
  python experiments/seed_claims/plot.py workdirs/seed_claims
"""

# Small, fast and aggressive enough that the effects show within minutes on 2 cores: a high
# learning rate, no weight decay, every step's metrics logged.
BASE_OVERRIDES = {
    "model.width": 128, "model.num_layers": 3, "model.mlp_dim": 512, "model.num_heads": 4,
    "train.num_train_steps": 2000, "train.learning_rate": 3e-3, "train.warmup_steps": 50,
    "train.log_every_steps": 50, "train.eval_every_steps": 0, "train.sample_every_steps": 0,
    "train.checkpoint_every_steps": 500, "train.time_limit_minutes": 14.0,
    "diffusion.schedule": "cosine",
}


def get_sweep():
  return [
      ("mse_alone", {"diffusion.rounding_weight": 0.0}),
      ("mse_rounding", {"diffusion.rounding_weight": 1.0}),
      # The anchor term: read-out CE of the denoiser's x0_hat at every t, not only at t_min.
      ("mse_anchor", {"diffusion.rounding_weight": 0.0, "diffusion.anchor_weight": 1.0}),
      ("ce_unnormalized", {"model.output": "logits", "model.normalize_embeddings": False,
                           "diffusion.rounding_weight": 0.0}),
      ("ce_normalized", {"model.output": "logits", "model.normalize_embeddings": True,
                         "diffusion.rounding_weight": 0.0}),
  ]
