"""OpenWebText at pod scale: the 1.6B-parameter model of tpu_pod_1b.py trained from a prepared
folder on a v5e-256 (or v4-256) slice. Not yet run on a real pod.

Prepare once, on one machine, into a disk every host then mounts (gcsfuse or a read-only
persistent disk; the loader memory-maps the shards, so a gs:// path must be mounted):

    cdm-prepare --config=configs/owt_1b.py --output=/mnt/owt/prepared \
        --config.data.corpus=hf --config.data.path=Skylion007/openwebtext --tokenizer_sample=2000000

then launch on every host (scripts/tpu_pod.sh, see docs/streaming.md for the dry run):

    CONFIG=configs/owt_1b.py ACCELERATOR=v5litepod-256 WORKDIR=gs://BUCKET/owt_1b \
        TPU_NAME=owt ZONE=us-west4-a bash scripts/tpu_pod.sh all

The folder is `data.prepared` (override with --config.data.prepared=...). Documents are split into
rows of seq_len (`data.long_lines=split`) and packed, so no token of a long document is lost and no
row is padding. The mesh: the train state is sharded over groups of 64 chips (axis `fsdp`, 0.38 GiB
of state per chip) and the groups replicate over axis `data` (4 on 256 chips); the global batch of
512 x 256 tokens is 2 rows per chip.
"""

from cdm_jax.runtime import config_files

PREPARED = "/mnt/owt/prepared"


def get_config():
  config = config_files.sibling(__file__, "tpu_pod_1b.py")
  config.data.update(prepared=PREPARED, long_lines="split", packing=True, valid_percent=0.5,
                     shuffle_window=1 << 20)
  config.train.fsdp_axis_size = 64
  return config
