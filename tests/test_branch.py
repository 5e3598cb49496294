"""Warmup-stable-decay schedules and branch runs (a cooldown started from a stable-phase
checkpoint of a longer run) with configs/tiny.py."""

import json

import chex
import jax
import numpy as np
import pytest

from cdm_jax.models import builders
from cdm_jax.runtime import checkpointing
from cdm_jax.training import train

from conftest import tiny_config  # tests/ is on sys.path
from test_train import restore_everything


def wsd_config(corpus, steps: int, **overrides):
  settings = dict(num_train_steps=steps, warmup_steps=2, schedule="wsd", cooldown_fraction=0.25,
                  log_every_steps=2, eval_every_steps=0, sample_every_steps=0,
                  checkpoint_every_steps=4, keep_checkpoints=1)
  return tiny_config(corpus, **{**settings, **overrides})


@pytest.mark.parametrize("cooldown", ["linear", "cosine"])
def test_wsd_schedule_against_its_definition(cooldown):
  config = tiny_config("unused", schedule="wsd", num_train_steps=100, warmup_steps=10,
                       cooldown_fraction=0.2, cooldown=cooldown, learning_rate=2e-3)
  lr = builders.learning_rate_schedule(config.train)
  assert builders.cooldown_start(config.train) == 80
  for step in range(0, 101, 5):
    if step < 10:
      want = 2e-3 * step / 10
    elif step <= 80:
      want = 2e-3
    else:
      done = (step - 80) / 20
      want = 2e-3 * ((1 - done) if cooldown == "linear" else 0.5 * (1 + np.cos(np.pi * done)))
    np.testing.assert_allclose(float(lr(step)), want, rtol=1e-5, atol=1e-9, err_msg=str(step))
  longer = tiny_config("unused", schedule="wsd", num_train_steps=1000, warmup_steps=10,
                       learning_rate=2e-3)
  same = [float(builders.learning_rate_schedule(longer.train)(s)) for s in range(81)]
  assert same == [float(lr(s)) for s in range(81)]  # the stable phase ignores the run's length


@pytest.mark.slow  # trains for tens of seconds: the full suite's, not the fast tier's
def test_branch_is_the_dedicated_run(corpus, tmp_path):
  """A 12-step run keeping step 6; the 8-step branch cooled down from it equals an 8-step run of
  its own, bit for bit, and differs from the long run's end."""
  long_dir, branch_dir, own_dir = tmp_path / "long", tmp_path / "branch", tmp_path / "own"
  train.train_and_evaluate(wsd_config(corpus, 12, keep_steps=(6,)), str(long_dir))
  assert 6 in checkpointing.saved_steps(str(long_dir))  # kept although keep_checkpoints=1
  branch_config = wsd_config(corpus, 8, branch_from=str(long_dir), branch_step=6)
  assert train.train_and_evaluate(branch_config, str(branch_dir))["step"] == 8
  train.train_and_evaluate(wsd_config(corpus, 8), str(own_dir))
  state_b, data_b, step_b = restore_everything(branch_config, branch_dir)
  state_o, data_o, step_o = restore_everything(wsd_config(corpus, 8), own_dir)
  state_l, _, _ = restore_everything(wsd_config(corpus, 12), long_dir)
  assert step_b == step_o == 8 and data_b == data_o
  chex.assert_trees_all_equal(state_b.params, state_o.params)
  chex.assert_trees_all_equal(state_b.opt_state, state_o.opt_state)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(state_b.params),
                                                   jax.tree.leaves(state_l.params)))
  steps = [json.loads(line)["step"] for line in (branch_dir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [8]  # only the cooldown was trained there
  # A rerun resumes the branch from its own checkpoint, not the source's.
  assert train.train_and_evaluate(branch_config, str(branch_dir))["step"] == 8


def test_branch_refusals(corpus, tmp_path):
  long_dir = tmp_path / "long"
  train.train_and_evaluate(wsd_config(corpus, 12, keep_steps=(6,)), str(long_dir))
  cases = [
      (dict(branch_step=5), FileNotFoundError, "has checkpoints at"),
      (dict(branch_step=12, num_train_steps=20), ValueError, "source's cooldown"),
      (dict(branch_step=6, num_train_steps=6), ValueError, "this run's cooldown"),
      (dict(branch_step=6, schedule="cosine"), ValueError, "schedule"),
      (dict(branch_step=6, learning_rate=0.5), ValueError, "train.learning_rate"),
  ]
  for overrides, error, match in cases:
    settings = {"num_train_steps": 8, "branch_from": str(long_dir), **overrides}
    config = wsd_config(corpus, settings.pop("num_train_steps"), **settings)
    with pytest.raises(error, match=match):
      train.train_and_evaluate(config, str(tmp_path / "b"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    train.train_and_evaluate(wsd_config(corpus, 8, branch_from=str(tmp_path / "none"),
                                        branch_step=6), str(tmp_path / "b"))
  with pytest.raises(ValueError, match="cooldown_fraction"):
    train.train_and_evaluate(wsd_config(corpus, 8, cooldown_fraction=0.0), str(tmp_path / "b"))
