"""The x0-MSE recipe on the CPU demo's data and sizes (WordNet, 6.8M parameters, 2,000 steps or 17
minutes on 2 cores): MSE on x0 plus the rounding cross-entropy of the tied read-out, cosine
schedule, learning rate 1e-3; samples by DDPM, 100 steps, no clamp. Compute gap 21x against the
library's AR model at 2,000 steps (docs/results.md); the quality experiments build on it.
"""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.corpus = "wordnet"
  config.data.vocab_size = 4000
  config.data.seq_len = 32
  config.model.update(embed_dim=64, width=256, num_layers=6, num_heads=4, mlp_dim=1024)
  config.diffusion.schedule = "cosine"
  config.train.update(batch_size=64, num_train_steps=2000, learning_rate=1e-3, warmup_steps=200,
                      log_every_steps=50, eval_every_steps=500, checkpoint_every_steps=250,
                      sample_every_steps=1000, time_limit_minutes=17.0)
  # DDPM without clamping scored best on the judge at this budget (docs/results.md); if you clamp,
  # keep clamp_max_t < 1: clamping the noisy early x0_hat commits to PAD/EOS.
  config.sample.update(num_samples=16, num_steps=100, sampler="ddpm", clamp="none", clamp_max_t=0.5)
  return config
