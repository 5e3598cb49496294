"""A 1.625B-parameter model at Plaid's scale (24 layers x 2048, MLP 8192, length 256, vocabulary
32,000) for a 64-chip slice (v5e-64 or v4-64), the train state sharded over the chips (train.fsdp).
Not yet run on a real pod; `python experiments/fsdp_memory.py` checks its per-chip state bytes and
that its step compiles. Replicated, the state takes 16 bytes per parameter on every chip (float32
parameters, two Adam moments, EMA): 24.2 GiB, more than a v5e chip's 16 GB of HBM; sharded 64 ways,
0.38 GiB. One step is about 1.1 PFLOP (analytic; docs/scaling.md).
"""

from cdm_jax.runtime import config_base


def get_config():
  config = config_base.get_config()
  config.data.vocab_size = 32000
  config.data.seq_len = 256
  config.model.update(embed_dim=128, width=2048, num_layers=24, num_heads=16, mlp_dim=8192,
                      dtype="bfloat16", scan_layers=True, remat=True)
  config.diffusion.update(schedule="cosine", time_warp=True)
  config.train.update(batch_size=512, num_train_steps=200_000, learning_rate=3e-4,
                      warmup_steps=5000, weight_decay=0.01, steps_per_call=1,
                      log_every_steps=200, eval_every_steps=5000, checkpoint_every_steps=1000,
                      sample_every_steps=5000, fsdp=True, fsdp_min_size=4096)
  config.sample.update(num_samples=64, num_steps=200)
  return config
