"""A seconds-scale config for tests: a tiny model on a corpus file the test writes."""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.corpus = "text"
  config.data.vocab_size = 32
  config.data.seq_len = 16
  config.data.valid_percent = 10.0
  config.model.update(embed_dim=8, width=32, num_layers=2, num_heads=2, mlp_dim=64)
  config.train.update(batch_size=8, num_train_steps=20, warmup_steps=5, log_every_steps=5,
                      eval_every_steps=10, num_eval_batches=1, checkpoint_every_steps=10,
                      sample_every_steps=10)
  config.sample.update(num_samples=4, num_steps=5)
  return config
