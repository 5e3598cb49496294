"""Peer-matched sizes for benchmarks/bench.py: the reference PyTorch embedding-diffusion setup.

Batch 64 x length 64, 6 layers x width 256, MLP 1024, 4 heads, embedding dim 128, vocabulary
11,043, x0-MSE + rounding loss, the time embedding added to the inputs once (the reference's
BERT-style denoiser; our default modulates every LayerNorm instead, adaLN, which costs 3-4% of a
training step here: benchmarks/NOTES.md). Only shapes matter to the benchmark (it feeds random
tokens).
"""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.vocab_size = 11043
  config.data.seq_len = 64
  config.model.update(embed_dim=128, width=256, num_layers=6, num_heads=4, mlp_dim=1024,
                      self_conditioning=False, time_conditioning="add")
  config.diffusion.update(schedule="sqrt", rounding_weight=1.0, self_cond_prob=0.0)
  config.train.batch_size = 64
  # The reference samples with 2,000 DDPM steps, clamping to the nearest embedding at each one.
  config.sample.update(num_steps=2000, sampler="ddpm", clamp="hard", decoder="l2", clamp_max_t=1.0)
  return config
