"""The reverse dictionary (definition -> lemma, `configs/wordnet_reverse.py`'s corpus and denoiser
sizes) in the latent space of `configs/wordnet_latent.py`'s text autoencoder: each
`BOS definition EOS lemma EOS` row is split in two, the autoencoder learns both halves, and the
denoiser (4 layers x 192) generates the lemma's m = 40 / 4 = 10 latents with the definition's 10
clean latents in context (20 positions per call instead of 40). The source is known for 90% of
examples, 10% of those with the null source (classifier-free guidance). Figures: docs/latent.md."""

from cdm_jax.runtime import config_files


def get_config():
  config = config_files.sibling(__file__, "wordnet_latent.py")
  config.data.corpus = "wordnet_reverse"
  config.data.seq_len = 40
  config.model.update(width=192, num_layers=4, mlp_dim=768)
  config.condition.update(source=0.9, dropout=0.1)
  config.train.update(learning_rate=1e-3, num_train_steps=3000, eval_every_steps=1000,
                      sample_every_steps=0, time_limit_minutes=0.0)  # its figures' learning rate
  config.sample.update(num_steps=50, sampler="ddpm", ddim_eta=0.0)  # the seq2seq figures' sampler
  return config
