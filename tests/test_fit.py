"""The fit function of the auxiliary models and the loop skeleton's stop rules, on tiny problems."""

import contextlib
import os
import signal
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cdm_jax.training import fit, loop


def _regression(seed: int = 0):
  """A least-squares problem with a known solution: w* = [1, -2, 3]."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(256, 3)).astype(np.float32)
  y = x @ np.array([1.0, -2.0, 3.0], np.float32)

  def loss_fn(w, scale, batch, unused_key):
    xs, ys = batch
    return jnp.mean((xs @ w * scale - ys) ** 2), {"w0": w[0]}

  def next_batch(step):
    rows = np.random.default_rng(step).integers(0, 256, 32)
    return x[rows], y[rows]
  return loss_fn, next_batch


def test_fit_solves_a_regression_and_records_its_history():
  loss_fn, next_batch = _regression()
  w, info = fit.fit(loss_fn, jnp.zeros(3), optax.adam(0.1), next_batch, num_steps=300,
                    key=jax.random.PRNGKey(0), frozen=jnp.float32(1.0), log_every_steps=100)
  np.testing.assert_allclose(w, [1.0, -2.0, 3.0], atol=0.05)
  assert info["steps"] == 300 and [h["step"] for h in info["history"]] == [100, 200, 300]
  assert info["history"][-1]["loss"] < min(1e-3, info["history"][0]["loss"])
  assert info["history"][-1]["w0"] == pytest.approx(float(w[0]), abs=0.05)


def test_frozen_inputs_are_arguments_not_gradients():
  """The frozen scale enters the loss but gets no update: with scale 2 the fit finds w* / 2."""
  loss_fn, next_batch = _regression()
  w, _ = fit.fit(loss_fn, jnp.zeros(3), optax.adam(0.1), next_batch, num_steps=300,
                 key=jax.random.PRNGKey(0), frozen=jnp.float32(2.0))
  np.testing.assert_allclose(w, [0.5, -1.0, 1.5], atol=0.05)


def test_same_inputs_same_parameters_and_a_time_limit_stops_early():
  loss_fn, next_batch = _regression()
  run = lambda: fit.fit(loss_fn, jnp.zeros(3), optax.adam(0.1), next_batch, num_steps=20,
                        key=jax.random.PRNGKey(0), frozen=jnp.float32(1.0))[0]
  np.testing.assert_array_equal(run(), run())
  _, info = fit.fit(loss_fn, jnp.zeros(3), optax.adam(0.1), next_batch, num_steps=10**9,
                    key=jax.random.PRNGKey(0), frozen=jnp.float32(1.0),
                    time_limit_minutes=0.5 / 60)
  assert 1 <= info["steps"] < 10**9 and info["history"][-1]["step"] == info["steps"]
  assert info["train_seconds"] == pytest.approx(0.5, abs=5.0)


class _Stage:
  """A stage of `training.loop` that counts: its state is the step; it records what happened."""

  def __init__(self, spec, start=0, due_every=0, on_dispatch=None):
    self.spec, self.manager, self.events = spec, object(), []
    self.start, self.due_every, self.on_dispatch = start, due_every, on_dispatch
    self.batches = types.SimpleNamespace(get_state=lambda: {"position": len(self.events)})

  def restore_or_init(self):
    return types.SimpleNamespace(step=self.start)

  def dispatch(self, state, step):
    if self.on_dispatch:
      self.on_dispatch(step)
    self.events.append(("dispatch", step))
    return types.SimpleNamespace(step=step + self.spec.steps_per_call), {}

  def after_step(self, state, step, metrics, last):
    self.events.append(("after", step, last))
    return state

  def checkpoint_due(self, step):
    return bool(self.due_every) and step % self.due_every == 0

  def checkpoint_view(self, state):
    return state

  def paused(self):
    return contextlib.nullcontext()

  def close(self):
    self.events.append(("closed",))


@pytest.fixture
def saves(monkeypatch):
  recorded = []
  monkeypatch.setattr(loop.checkpointing, "save",
                      lambda manager, step, state, data, force: recorded.append((step, force)))
  monkeypatch.setattr(loop.checkpointing, "finish", lambda manager, raise_errors=True: None)
  return recorded


def test_the_loop_checkpoints_on_its_cadence_when_due_and_at_the_end(saves):
  stage = _Stage(loop.LoopSpec(total_steps=10, checkpoint_every_steps=4), due_every=5)
  _, step = loop.run(stage)
  assert step == 10 and saves == [(4, False), (5, True), (8, False), (10, True)]
  assert stage.events[-1] == ("closed",) and stage.events[-2] == ("after", 10, True)
  resumed = _Stage(loop.LoopSpec(total_steps=10, checkpoint_every_steps=4, steps_per_call=2),
                   start=6)
  saves.clear()
  assert loop.run(resumed)[1] == 10 and saves == [(8, False), (10, True)]


def test_the_loop_stops_at_stop_at_step_a_time_limit_and_sigterm(saves):
  assert loop.run(_Stage(loop.LoopSpec(total_steps=10, checkpoint_every_steps=0,
                                       stop_at_step=3)))[1] == 3
  assert saves == [(3, True)]
  saves.clear()
  slow = lambda step: time.sleep(0.05)
  assert loop.run(_Stage(loop.LoopSpec(total_steps=10**6, checkpoint_every_steps=0,
                                       time_limit_minutes=0.2 / 60), on_dispatch=slow))[1] < 100
  assert len(saves) == 1 and saves[0][1]
  saves.clear()
  terminate = lambda step: os.kill(os.getpid(), signal.SIGTERM) if step == 4 else None
  assert loop.run(_Stage(loop.LoopSpec(total_steps=10, checkpoint_every_steps=0),
                         on_dispatch=terminate))[1] == 5
  assert saves == [(5, True)]


def test_the_loop_closes_the_stage_and_stops_orbax_on_an_error(saves, monkeypatch):
  finished = []
  monkeypatch.setattr(loop.checkpointing, "finish",
                      lambda manager, raise_errors=True: finished.append(raise_errors))

  def fail(step):
    if step == 2:
      raise FloatingPointError("boom")
  stage = _Stage(loop.LoopSpec(total_steps=10, checkpoint_every_steps=0), on_dispatch=fail)
  with pytest.raises(FloatingPointError, match="boom"):
    loop.run(stage)
  assert finished == [False] and stage.events[-1] == ("closed",)
