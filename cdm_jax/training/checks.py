"""What a training config must hold before any work starts: a bad number is a one-line ValueError
naming the key and the fix, found before the corpus is read or a step compiles."""

import math

import ml_collections

from cdm_jax.models import builders

# (key, what it must be); each checked where the config has it.
_POSITIVE_INTS = ("train.batch_size", "train.num_train_steps", "train.steps_per_call",
                  "train.log_every_steps", "data.seq_len", "autoencoder.batch_size",
                  "autoencoder.num_steps")
_NON_NEGATIVE_INTS = ("train.warmup_steps", "train.checkpoint_every_steps",
                      "train.eval_every_steps", "train.sample_every_steps", "train.stop_at_step",
                      "train.num_eval_batches", "autoencoder.warmup_steps", "train.branch_step")
_POSITIVE_FLOATS = ("train.learning_rate", "autoencoder.learning_rate")
_NON_NEGATIVE_FLOATS = ("train.weight_decay", "train.grad_clip_norm", "train.time_limit_minutes",
                        "autoencoder.weight_decay")


def _get(config, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def check_train_config(config: ml_collections.ConfigDict):
  """Raises ValueError at the first value training cannot run with (see the lists above)."""
  for key in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
    value = _get(config, key)
    floor = 1 if key in _POSITIVE_INTS else 0
    if value is not None and not (isinstance(value, int) and value >= floor):
      raise ValueError(f"{key} must be an integer >= {floor}, got {value!r}.")
  for key in _POSITIVE_FLOATS + _NON_NEGATIVE_FLOATS:
    value = _get(config, key)
    if value is None:
      continue
    positive = key in _POSITIVE_FLOATS
    if not (isinstance(value, (int, float)) and math.isfinite(value) and
            (value > 0 if positive else value >= 0)):
      raise ValueError(f"{key} must be a finite number {'> 0' if positive else '>= 0'}, got "
                       f"{value!r}.")
  fraction = _get(config, "train.cooldown_fraction")
  if fraction is not None and not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
    raise ValueError(f"train.cooldown_fraction must lie in (0, 1], got {fraction!r}.")
  for key, choices in (("train.schedule", builders.SCHEDULES), ("train.cooldown", builders.COOLDOWNS)):
    value = _get(config, key)
    if value is not None and value not in choices:
      raise ValueError(f"{key} must be one of {choices}, got {value!r}.")
  keep = _get(config, "train.keep_steps")
  if keep is not None and not all(isinstance(s, int) and s > 0 for s in keep):
    raise ValueError(f"train.keep_steps must be positive step numbers, got {keep!r}.")
  decay = _get(config, "train.ema_decay")
  if decay is not None and not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
    raise ValueError(f"train.ema_decay must lie in [0, 1), got {decay!r}.")
