"""A ~1.6B-parameter model (1.625B) at Plaid's scale for a 64-chip slice (v5e-64 or v4-64 TensorCores),
with the train state sharded over the chips (train.fsdp). Not run on this project's machines;
`python experiments/fsdp_memory.py` checks its per-chip state bytes and that its step compiles.

Per parameter the replicated state takes 16 bytes on every chip (float32 parameters, two Adam
moments, EMA): 24.2 GiB, more than a v5e chip's 16 GB of HBM. Sharded 64 ways it is 0.38 GiB.
"""

import pathlib
import runpy


def get_config():
  config = runpy.run_path(str(pathlib.Path(__file__).with_name("tpu_pod.py")))["get_config"]()
  config.data.vocab_size = 32000
  config.data.seq_len = 256
  config.model.update(embed_dim=128, width=2048, num_layers=24, num_heads=16, mlp_dim=8192,
                      dtype="bfloat16", scan_layers=True, remat=True)
  config.train.update(batch_size=512, learning_rate=3e-4, fsdp=True, fsdp_min_size=4096)
  return config
