"""configs/tiny.py with the latent encoder: a one-layer text autoencoder to m = 16 / 2 = 8 latents
of 16 dims, trained for 600 steps of milliseconds, then the tiny denoiser on its latents. For tests
and quick checks."""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.corpus = "text"
  config.data.vocab_size = 32
  config.data.seq_len = 16
  config.data.valid_percent = 10.0
  config.model.update(encoder="latent", latent_ratio=2, embed_dim=16, width=32, num_layers=2,
                      num_heads=2, mlp_dim=64, conditioning=False)
  config.autoencoder = config_base.autoencoder()
  config.autoencoder.update(width=32, num_heads=2, mlp_dim=64, encoder_layers=1,
                            resampler_layers=1, decoder_layers=1, batch_size=16, num_steps=600,
                            learning_rate=3e-3, warmup_steps=20, checkpoint_every_steps=200,
                            log_every_steps=50, eval_batches=0, stats_batches=4)
  config.condition.update(prefix=0.0, suffix=0.0, spans=0.0, source=0.0)
  config.diffusion.rounding_weight = 0.0
  config.train.update(batch_size=8, num_train_steps=20, warmup_steps=5, log_every_steps=5,
                      eval_every_steps=10, num_eval_batches=1, checkpoint_every_steps=10,
                      sample_every_steps=10)
  config.sample.update(num_samples=4, num_steps=5, clamp="none")
  return config
