"""The workdir's run record: `config.json` is written once and only changed by a resume that keeps
every field that shapes the checkpoint; what a resume changed is appended to `config_history.jsonl`.
"""

import json
import logging
import time

import ml_collections

from cdm_jax.runtime import config_base
from cdm_jax.runtime import fs

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
log = logging.getLogger(__name__)
# What a run derives from its config before its first checkpoint; a run that failed before that
# checkpoint (a bad corpus path, vocabulary size...) leaves them, and the corrected command replaces
# them instead of refusing to resume.
DERIVED_FILES = ("tokenizer.model", "data_fingerprint.json")


def has_checkpoint(workdir) -> bool:
  """Whether `workdir` holds a committed training checkpoint (a step folder of checkpoints/)."""
  folder = fs.path(workdir) / "checkpoints"
  return folder.is_dir() and any(child.name.isdigit() for child in folder.iterdir())


# Fields a resume may change: how long and how often, not what is trained. Prefixes end with ".".
MUTABLE = ("train.num_train_steps", "train.time_limit_minutes", "train.stop_at_step",
           "train.log_every_steps", "train.eval_every_steps", "train.num_eval_batches",
           "train.checkpoint_every_steps", "train.keep_checkpoints", "train.keep_steps", "train.sample_every_steps",
           "train.num_devices", "train.steps_per_call", "train.embedding_stats_t", "train.fsdp",
           "train.fsdp_min_size", "train.fsdp_axis_size", "model.remat", "sample.")
_ABSENT = "(absent)"
# A field a newer version of the library added may appear on resume at its default value: the old
# run behaved as the default does. Not so where absence has its own meaning (an absent `condition`
# block means nothing known, not the default mixture).
_ABSENCE_MEANS_OTHER = ("condition.",)


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _mutable(key: str) -> bool:
  return any(key == m or (m.endswith(".") and key.startswith(m)) for m in MUTABLE)


def config_changes(saved: dict, new: dict, defaults: dict | None = None) -> tuple[dict, dict]:
  """(conflicts, allowed): {field: (old, new)} of the fields that differ between two configs.
  With `defaults` (the library's base config), a field absent from `saved` that arrives at its
  default value is allowed."""
  old_flat, new_flat = flatten(saved), flatten(new)
  default_flat = flatten(defaults or {})
  conflicts, allowed = {}, {}
  for key in sorted(set(old_flat) | set(new_flat)):
    old, value = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
    if old == value:
      continue
    added_at_default = (old == _ABSENT and key in default_flat and default_flat[key] == value
                        and not key.startswith(_ABSENCE_MEANS_OTHER))
    (allowed if _mutable(key) or added_at_default else conflicts)[key] = (old, value)
  return conflicts, allowed


def write_config(workdir, config: ml_collections.ConfigDict):
  """Writes the run record, or on a resume checks it first.

  Raises ValueError naming every differing field (old -> new) when the new config changes one
  that shapes the checkpoint or the data; nothing is written then. Allowed changes are appended to
  the history with a time stamp.
  """
  workdir = fs.path(workdir)
  path = workdir / CONFIG_FILE
  new = json.loads(config.to_json_best_effort())
  if path.is_file():
    saved = json.loads(path.read_text(encoding="utf-8"))
    defaults = json.loads(config_base.get_config().to_json_best_effort())
    conflicts, allowed = config_changes(saved, new, defaults)
    if conflicts and not has_checkpoint(workdir):
      log.warning("%s holds no checkpoint: its config of a run that never checkpointed is "
                  "replaced (changed: %s).", workdir, ", ".join(conflicts))
      for name in DERIVED_FILES:
        if (workdir / name).exists():
          (workdir / name).unlink()
      conflicts, allowed = {}, {**allowed, **conflicts}
    if conflicts:
      fields = "; ".join(f"{key}: {old!r} -> {value!r}" for key, (old, value) in conflicts.items())
      raise ValueError(
          f"{workdir} was trained with a different config; resuming would not match its "
          f"checkpoints ({fields}). Rerun with the saved values (see {path}), or train in a new "
          "--workdir. Only the length of training, intervals and sampling may change on resume.")
    if not allowed:
      return
    fs.append_line(workdir / HISTORY_FILE, json.dumps(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
         "changed": {k: list(v) for k, v in allowed.items()}}))
  fs.write_atomic(path, config.to_json_best_effort(indent=2))  # readers never see half a record
