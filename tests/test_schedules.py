import math

import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.core import diffusion
from cdm_jax.core import schedules


def reference_log_snr(name, t):
  """float64 NumPy log-SNR of each schedule, written from the papers' formulas."""
  t = np.asarray(t, np.float64)
  if name == "cosine":
    alpha_bar = np.cos(np.pi * t / 2) ** 2
  elif name == "linear":
    alpha_bar = np.exp(-(0.1 * t + 0.5 * (20.0 - 0.1) * t**2))
  elif name == "sqrt":
    alpha_bar = 1 - np.sqrt(t + 1e-4)
  elif name == "tan_d":
    alpha_bar = 1 / (1 + 81.0 * np.tan(np.pi * t / 2) ** 2)
  elif name == "ve":
    s = 0.01 * (100.0 / 0.01) ** t
    alpha_bar = 1 / (1 + s**2)
  return np.log(alpha_bar / (1 - alpha_bar))


ALL = ["cosine", "linear", "sqrt", "tan_d", "ve"]


@pytest.mark.parametrize("name", ALL)
def test_endpoints(name):
  s = schedules.get_schedule(name)
  ends = jnp.array([0.0, 1.0])
  gamma, sigma = np.asarray(s.gamma(ends)), np.asarray(s.sigma(ends))
  # sqrt starts at alpha_bar = 1 - sqrt(1e-4) = 0.99 by design (sigma(0) = 0.1).
  tol0 = 0.11 if name == "sqrt" else 0.02
  assert gamma[0] == pytest.approx(1.0, abs=tol0) and sigma[0] == pytest.approx(0.0, abs=tol0)
  assert gamma[1] == pytest.approx(0.0, abs=0.02) and sigma[1] == pytest.approx(1.0, abs=0.02)
  np.testing.assert_allclose(gamma**2 + sigma**2, 1.0, rtol=1e-6)
  assert np.all(np.isfinite(s.log_snr(ends)))


@pytest.mark.parametrize("name", ALL)
def test_strictly_monotone_and_matches_reference(name):
  s = schedules.get_schedule(name)
  t = np.linspace(s.t_min, s.t_max, 501)
  log_snr = np.asarray(s.log_snr(t), np.float64)
  assert np.all(np.diff(log_snr) < 0)
  assert np.all(np.diff(np.asarray(s.gamma(t))) <= 0) and np.all(np.diff(np.asarray(s.sigma(t))) >= 0)
  inner = (t > 0.01) & (t < 0.99)
  np.testing.assert_allclose(log_snr[inner], reference_log_snr(name, t[inner]), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_derivatives_match_finite_differences(name):
  s = schedules.get_schedule(name)
  t = np.linspace(0.05, 0.95, 19)
  h = 1e-5
  fd = (reference_log_snr(name, t + h) - reference_log_snr(name, t - h)) / (2 * h)
  np.testing.assert_allclose(np.asarray(s.dlog_snr_dt(t)), fd, rtol=2e-3)
  ref_gamma = lambda u: np.sqrt(1 / (1 + np.exp(-reference_log_snr(name, u))))
  fd_gamma = (ref_gamma(t + h) - ref_gamma(t - h)) / (2 * h)
  np.testing.assert_allclose(np.asarray(s.dgamma_dt(t)), fd_gamma, rtol=2e-3, atol=1e-5)


def test_registry_errors_and_overrides():
  with pytest.raises(ValueError, match="Unknown schedule 'nope'"):
    schedules.get_schedule("nope")
  with pytest.raises(ValueError, match="t_min < t_max"):
    schedules.get_schedule("cosine", t_min=0.5, t_max=0.4)
  s = schedules.get_schedule("tan_d", d=3.0)
  np.testing.assert_allclose(float(s.log_snr(0.5)), -2 * math.log(3.0), rtol=1e-5)


def test_time_warp_follows_the_loss_and_weights_are_unbiased():
  warp = schedules.init_time_warp(10)
  rng = np.random.default_rng(0)
  for _ in range(300):  # loss is high in the middle bins
    t = rng.uniform(size=256)
    loss = np.where((t > 0.3) & (t < 0.5), 10.0, 1.0)
    warp = warp.update(jnp.asarray(t), jnp.asarray(loss), decay=0.9)
  u = schedules.low_discrepancy_uniform(jnp.float32(0.123), jnp.arange(20000), 20000)
  t, weight = warp.inverse_cdf(u)
  t = np.asarray(t)
  share = np.mean((t > 0.3) & (t < 0.5))
  assert share > 0.6  # 2 of 10 bins, but they hold 20/28 of the loss
  assert np.all(np.diff(np.asarray(warp.cdf_knots())) > 0)
  # E_p[w(t) f(t)] equals the uniform average of f: the importance weight removes the warp's bias.
  f = lambda x: np.sin(3 * x) + x**2
  uniform_mean = np.mean(f(np.linspace(0, 1, 200001)))
  np.testing.assert_allclose(np.mean(np.asarray(weight) * f(t)), uniform_mean, rtol=5e-3)


def test_time_grid_is_decreasing_and_warped_grid_concentrates():
  s = schedules.get_schedule("cosine")
  grid = np.asarray(schedules.time_grid(s, 10))
  assert grid.shape == (11,) and grid[0] == pytest.approx(s.t_max) and grid[-1] == pytest.approx(s.t_min)
  assert np.all(np.diff(grid) < 0)
  warp = schedules.TimeWarp(bin_loss=jnp.array([1.0, 1.0, 20.0, 1.0]), bin_seen=jnp.ones(4))
  warped = np.asarray(schedules.time_grid(s, 40, warp))
  assert np.all(np.diff(warped) < 0)
  assert np.mean((warped > 0.5) & (warped < 0.75)) > 0.6


def test_slope_warp_puts_time_where_the_loss_changes():
  # A loss that is flat (0) up to t = 0.4, rises linearly to 6 at t = 0.6 and stays there: the
  # CDCD warp's CDF is the loss itself, so (up to the floor) all time falls in [0.4, 0.6].
  centers = (np.arange(50) + 0.5) / 50
  loss = np.clip((centers - 0.4) / 0.2, 0.0, 1.0) * 6.0
  warp = schedules.TimeWarp(bin_loss=jnp.asarray(loss, jnp.float32), bin_seen=jnp.ones(50))
  density = np.asarray(warp.density(floor=0.0, follow="slope"), np.float64)
  expected = np.diff(np.concatenate([[0.0], loss]))  # float64 reference: increments of the loss
  np.testing.assert_allclose(density, expected / expected.sum(), atol=1e-6)
  t, _ = warp.inverse_cdf(jnp.linspace(0.0, 1.0, 10001), follow="slope")
  assert np.mean((np.asarray(t) > 0.39) & (np.asarray(t) < 0.61)) > 0.95
  # "loss" puts the mass where the loss is high instead: mostly past 0.6.
  t_loss, _ = warp.inverse_cdf(jnp.linspace(0.0, 1.0, 10001))
  assert np.mean(np.asarray(t_loss) > 0.6) > 0.7
  # A noisy dip is ignored (running maximum): the CDF stays monotone, no negative density.
  dipped = schedules.TimeWarp(bin_loss=jnp.asarray([0.0, 2.0, 1.0, 3.0]), bin_seen=jnp.ones(4))
  np.testing.assert_allclose(np.asarray(dipped.density(floor=0.0, follow="slope")),
                             [0.0, 2 / 3, 0.0, 1 / 3], atol=1e-6)
  with pytest.raises(ValueError, match="warp_follow"):
    diffusion.LossConfig(warp_follow="entropy")
