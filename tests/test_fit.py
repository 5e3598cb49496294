"""The fit function of the auxiliary models and the loop skeleton's stop rules, on tiny problems."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cdm_jax.training import fit


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
