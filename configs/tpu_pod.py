"""A multi-host TPU VM slice run (e.g. v4-32: 16 chips on 4 hosts), launched on every host at once
by scripts/tpu_pod.sh with --multihost. Not run on this project's CPU machine.

The model is configs/tpu_v4_8.py's (~60M parameters, replicated on every chip); the global batch
grows with the slice and must divide by the chip count. The workdir must be a gs:// path (every
host reads the same checkpoints; install the `gcs` extra). A SIGTERM to any host (preemption,
`tpu_pod.sh stop`) makes all hosts stop at one agreed step with one checkpoint.
"""

import pathlib
import runpy


def get_config():
  config = runpy.run_path(str(pathlib.Path(__file__).with_name("tpu_v4_8.py")))["get_config"]()
  config.train.update(batch_size=2048, learning_rate=6e-4, checkpoint_every_steps=1000)
  return config
