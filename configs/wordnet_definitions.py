"""Seq2seq on WordNet, nothing downloaded: definition modelling (lemmas -> definition), DiffuSeq-style
(the source half known, the target noised). 2.6M parameters (4 layers x 192, length 40); 3,000 steps
of batch 64, about 35 minutes on a 2-core x86 CPU."""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.corpus = "wordnet_definitions"
  config.data.vocab_size = 4000
  config.data.seq_len = 40
  config.model.update(embed_dim=32, width=192, num_layers=4, num_heads=4, mlp_dim=768)
  # Known source for 90% of examples (10% of those with the null source, for guidance), the rest
  # unconditional: every example still teaches the target's language.
  config.condition.update(prefix=0.0, suffix=0.0, spans=0.0, source=0.9, dropout=0.1)
  config.train.update(batch_size=64, num_train_steps=3000, learning_rate=1e-3, warmup_steps=200,
                      log_every_steps=50, eval_every_steps=1000, checkpoint_every_steps=250,
                      sample_every_steps=0, time_limit_minutes=0.0)
  config.sample.update(num_samples=16, num_steps=50, sampler="ddpm", clamp="none", clamp_max_t=0.5)
  return config
