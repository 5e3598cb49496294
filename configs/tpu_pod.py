"""A multi-host TPU VM slice run (e.g. v4-32: 16 chips on 4 hosts), launched on every host at once
by scripts/tpu_pod.sh with --multihost. Not yet run on a real pod.

The ~60M-parameter model of tpu_v4_8.py (12 layers x 768, length 64, vocabulary 8,000), replicated on
every chip; a global batch of 2,048 that must divide by the chip count. The workdir must be a gs://
path (every host reads the same checkpoints; install the `gcs` extra). A SIGTERM to any host
(preemption, `tpu_pod.sh stop`) makes all hosts stop at one agreed step with one checkpoint.
"""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.vocab_size = 8000
  config.data.seq_len = 64
  config.model.update(embed_dim=128, width=768, num_layers=12, num_heads=12, mlp_dim=3072,
                      dtype="bfloat16", scan_layers=True)
  config.diffusion.update(schedule="cosine", time_warp=True)
  config.train.update(batch_size=2048, num_train_steps=200_000, learning_rate=6e-4,
                      warmup_steps=5000, weight_decay=0.01, steps_per_call=1,
                      log_every_steps=200, eval_every_steps=5000, checkpoint_every_steps=1000,
                      sample_every_steps=5000)
  config.sample.update(num_samples=64, num_steps=200)
  return config
