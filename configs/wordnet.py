"""The CPU demo: WordNet 3.0 glosses and examples, 6.8M parameters (6 layers x 256, 64-dim
embeddings, vocabulary 4,000, length 32); 2,000 steps of batch 64 (150 TFLOP), capped at 17 minutes
(about 1,200 steps on a 2-core x86 CPU: 8.8x behind AR there, docs/latent.md).

Recipe: cross-entropy with the output prior on L2-normalized embeddings (CDCD, Plaid), time
warping that follows the loss slope with the sampling grid warped alike (CDCD), a position embedding
initialised at std 1, peak learning rate 2e-3; samples by DDPM, 100 steps, logit temperature 0.85.
Its compute gap to the library's AR model is 17x (docs/results.md); configs/wordnet_mse.py is the
x0-MSE alternative.
"""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.corpus = "wordnet"
  config.data.vocab_size = 4000
  config.data.seq_len = 32
  config.model.update(embed_dim=64, width=256, num_layers=6, num_heads=4, mlp_dim=1024,
                      output="logits_prior", normalize_embeddings=True, pos_init_std=1.0)
  config.diffusion.update(schedule="cosine", rounding_weight=0.0, time_warp=True,
                          importance_weight=False, warp_follow="slope")
  config.train.update(batch_size=64, num_train_steps=2000, learning_rate=2e-3, warmup_steps=200,
                      log_every_steps=50, eval_every_steps=500, checkpoint_every_steps=250,
                      sample_every_steps=1000, time_limit_minutes=17.0)
  config.sample.update(num_samples=16, num_steps=100, sampler="ddpm", clamp="none", clamp_max_t=0.5,
                       time_grid="warp", logit_temperature=0.85)
  return config
