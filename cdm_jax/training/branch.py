"""Branch runs: a new workdir whose first state is another run's checkpoint.

With `train.schedule="wsd"` the learning rate is constant between the warm-up and the cooldown, and
until the cooldown it does not depend on `num_train_steps`. One long run that keeps checkpoints at
the cooldown starts of shorter budgets (`train.keep_steps`) therefore yields every shorter run:
a branch with `train.num_train_steps=N`, `train.branch_from=LONG_WORKDIR` and
`train.branch_step=cooldown_start(N)` copies that checkpoint (state, data position), the tokenizer,
the data fingerprint and a latent model's autoencoder into its own workdir and trains only the
cooldown. It is the run a dedicated N-step "wsd" run would have been, at the cost of its cooldown.

    cdm-train --config=C --workdir=W_2000 --config.train.schedule=wsd \\
        --config.train.num_train_steps=2000 --config.train.branch_from=W_6000 \\
        --config.train.branch_step=1600
"""

import json
import logging

import ml_collections

from cdm_jax.data import fingerprint, tokenizer
from cdm_jax.models import builders
from cdm_jax.runtime import checkpointing, config_base, fs
from cdm_jax.runtime import config_record as record
from cdm_jax.training import autoencoder

log = logging.getLogger(__name__)
# What a branch takes from its source besides the checkpoint: what the run derived before training.
COPIED = (tokenizer.MODEL_FILE, fingerprint.FINGERPRINT_FILE, autoencoder.AUTOENCODER_DIR)
_BRANCH_KEYS = ("train.branch_from", "train.branch_step")


def check_branch(config: ml_collections.ConfigDict):
  """Raises ValueError (FileNotFoundError for a missing source or step) when `config`'s branch
  cannot start: the source is not a trained workdir, its config trains something else, the step is
  not saved there, or the step lies outside both runs' stable phase."""
  tcfg = config.train
  source, step = tcfg.get("branch_from", ""), tcfg.get("branch_step", 0)
  if not source:
    return
  saved_path = fs.path(source) / record.CONFIG_FILE
  if not saved_path.is_file():
    raise FileNotFoundError(f"train.branch_from={source!r} holds no {record.CONFIG_FILE}: "
                            "branch from a trained workdir.")
  saved = json.loads(saved_path.read_text(encoding="utf-8"))
  new = json.loads(config.to_json_best_effort())
  defaults = json.loads(config_base.get_config().to_json_best_effort())
  conflicts, _ = record.config_changes(saved, new, defaults)
  conflicts = {k: v for k, v in conflicts.items() if k not in _BRANCH_KEYS}
  if conflicts:
    fields = "; ".join(f"{key}: {old!r} -> {value!r}" for key, (old, value) in conflicts.items())
    raise ValueError(f"A branch trains what its source trained; {source} differs in {fields}.")
  if tcfg.get("schedule", "cosine") != "wsd":
    raise ValueError("Branch runs need train.schedule='wsd' (in the source too): only its learning "
                     "rate up to the cooldown does not depend on num_train_steps.")
  steps = checkpointing.saved_steps(source)
  if step not in steps:
    raise FileNotFoundError(f"train.branch_step={step}: {source} has checkpoints at {steps}; keep "
                            "branch points with train.keep_steps in the source run.")
  source_config = ml_collections.ConfigDict(saved)
  limits = {"the source's": builders.cooldown_start(source_config.train),
            "this run's": builders.cooldown_start(tcfg)}
  for whose, start in limits.items():
    if step > start:
      raise ValueError(f"train.branch_step={step} lies in {whose} cooldown (it starts at step "
                       f"{start}); branch from a stable-phase step, e.g. {start}.")


def prepare_branch(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Copies the branch point into `workdir` when `config` branches and `workdir` holds no
  checkpoint yet (a resumed branch goes on from its own). Returns whether it copied."""
  source, step = config.train.get("branch_from", ""), config.train.get("branch_step", 0)
  if not source or record.has_checkpoint(workdir):
    return False
  src, dst = fs.path(source), fs.path(workdir)
  for name in COPIED:
    if (src / name).exists():
      _copy(src / name, dst / name)
  _copy(src / "checkpoints" / str(step), dst / "checkpoints" / str(step))
  log.info("Branched %s from %s at step %d.", workdir, source, step)
  return True


def _copy(src, dst):
  """Copies a file or a folder tree (any `etils.epath` path: local or a bucket)."""
  if src.is_dir():
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
      _copy(child, dst / child.name)
  else:
    src.copy(dst, overwrite=True)
