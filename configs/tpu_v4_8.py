"""A TPU-sized run (v4-8 or v5e-8: 4-8 chips, one host). Not yet run on a real TPU.

Launch on the TPU VM:
  cdm-train --config=configs/tpu_v4_8.py --workdir=gs://BUCKET/cdm/wordnet_large
(or a local path), with `pip install -e . "jax[tpu]"`. Batches are split over all chips;
parameters replicate (~60M parameters fit easily in each chip's HBM).
"""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.vocab_size = 8000
  config.data.seq_len = 64
  config.model.update(embed_dim=128, width=768, num_layers=12, num_heads=12, mlp_dim=3072,
                      dtype="bfloat16", scan_layers=True)
  config.diffusion.update(schedule="cosine", time_warp=True)
  config.train.update(batch_size=512, num_train_steps=200_000, learning_rate=3e-4,
                      warmup_steps=5000, weight_decay=0.01, steps_per_call=1,
                      log_every_steps=200, eval_every_steps=5000, checkpoint_every_steps=2000,
                      sample_every_steps=5000)
  config.sample.update(num_samples=64, num_steps=200)
  return config
