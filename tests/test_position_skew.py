"""Left-to-right (position-skewed) schedules: per-position times, training inputs, bound, samplers."""

import types

import jax
import jax.numpy as jnp
import numpy as np

import pytest

from cdm_jax.core import diffusion
from cdm_jax.core import samplers
from cdm_jax.core import schedules
from cdm_jax.evaluation.context_use import context_accuracy
from cdm_jax.models import DenoiserOutput, DiffusionLM, ModelConfig
from test_diffusion import OracleModel  # tests/ is on sys.path (pytest's default import mode)
from test_samplers import check_two_point_samples, two_point_denoiser


def np_position_times(t, length, w):
  rel = np.arange(length, dtype=np.float64) / (length - 1)
  return np.clip((1 + w) * np.asarray(t, np.float64)[:, None] - w * (1 - rel), 0.0, 1.0)


def skewed(w, name="cosine"):
  return schedules.with_position_skew(schedules.get_schedule(name), w)


def test_position_times_match_numpy_and_reach_both_ends():
  t = np.array([0.0, 0.1, 0.35, 0.5, 0.8, 1.0])
  for w in (0.5, 2.0, 4.0):
    got = np.asarray(skewed(w).position_times(jnp.asarray(t, jnp.float32), 7))
    np.testing.assert_allclose(got, np_position_times(t, 7, w), atol=1e-6)
    assert np.all(got[0] == 0.0) and np.all(got[-1] == 1.0)  # all clean at 0, all noise at 1
    assert np.all(np.diff(got, axis=1) >= 0)  # left positions are never noisier than right ones
  plain = schedules.get_schedule("cosine")
  assert plain.position_times(jnp.asarray(t), 7).shape == t.shape  # no skew: one time per example
  with pytest.raises(ValueError, match="position_skew"):
    schedules.with_position_skew(plain, -1.0)


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_bound_times_integrate_every_position_over_the_whole_schedule(w):
  # For every position, int_0^1 -dSNR/dt dt/dtau dtau = SNR(t_min) - SNR(t_max): each position
  # travels the schedule exactly once, whatever the skew. Midpoint rule on a fine tau grid.
  import dataclasses
  sched = skewed(w)
  sched = dataclasses.replace(sched, t_min=schedules.time_at_log_snr(sched, 4.0))
  n = 200_000
  tau = (jnp.arange(n, dtype=jnp.float32) + 0.5) / n
  t, dt_dtau = diffusion.bound_times(sched, tau, 5)
  rate = -sched.dlog_snr_dt(t) * jnp.exp(sched.log_snr(t)) * dt_dtau
  integral = np.asarray(jnp.sum(rate, axis=0) / n, np.float64) * np.ones(5)
  expected = np.exp(4.0) - float(jnp.exp(sched.log_snr(sched.t_max)))
  np.testing.assert_allclose(integral, expected, rtol=2e-3)


def test_training_noises_each_position_at_its_own_time():
  config = ModelConfig(vocab_size=12, seq_len=6, embed_dim=4, self_conditioning=False)
  seen = []
  model = OracleModel(config, seen)
  table = jax.random.normal(jax.random.PRNGKey(0), (12, 4))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 6), 0, 12)
  t = jnp.array([0.2, 0.5, 0.9])
  noise = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 6, 4))
  sched = skewed(2.0)
  inputs = diffusion.LossInputs(tokens=tokens, mask=tokens >= 0, t=t, weight=jnp.ones(3), noise=noise,
                                self_cond=jnp.array(False))
  diffusion.training_losses(model, {"table": table}, inputs, sched,
                            diffusion.LossConfig(rounding_weight=0.0), train=False)
  x_t, log_snr = seen[-1]
  tn = np.clip(np_position_times(t, 6, 2.0), sched.t_min, sched.t_max)
  gamma, sigma = np.cos(np.pi * tn / 2), np.sin(np.pi * tn / 2)
  np.testing.assert_allclose(np.asarray(log_snr), np.log(gamma**2 / sigma**2), rtol=1e-4, atol=1e-4)
  x0 = np.asarray(table, np.float64)[np.asarray(tokens)]
  expected = gamma[..., None] * x0 + sigma[..., None] * np.asarray(noise[0], np.float64)
  np.testing.assert_allclose(np.asarray(x_t), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_bound_with_constant_error_agrees_across_skews():
  # A zero predictor's squared error does not depend on tau, so the diffusion term's expectation is
  # the same for any skew: 1/2 sum ||x0||^2 (SNR(t_min) - SNR(t_max)).
  config = ModelConfig(vocab_size=12, seq_len=6, embed_dim=4, self_conditioning=False)
  table = jax.random.normal(jax.random.PRNGKey(0), (12, 4))
  batch = 2048
  tokens = jnp.tile(jax.random.randint(jax.random.PRNGKey(1), (1, 6), 0, 12), (batch, 1))
  tau = schedules.low_discrepancy_uniform(jnp.float32(0.37), jnp.arange(batch), batch)
  noise = jax.random.normal(jax.random.PRNGKey(2), (2, batch, 6, 4))
  terms = []
  for w in (0.0, 1.0, 3.0):
    model = OracleModel(config)
    terms.append(float(diffusion.likelihood_bound(model, {"table": table}, tokens, t=tau, noise=noise,
                                                  schedule=skewed(w), log_snr_max=4.0)["diffusion"]))
  sched = skewed(0.0)
  snr_max = np.exp(4.0)
  snr_min = float(jnp.exp(sched.log_snr(sched.t_max)))
  exact = 0.5 * batch * np.sum(np.asarray(table, np.float64)[np.asarray(tokens[0])] ** 2) * (snr_max - snr_min)
  np.testing.assert_allclose(terms, exact, rtol=1e-2)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun"])
def test_exact_denoiser_samples_the_two_point_data_with_skew(sampler):
  sched = skewed(2.0)
  x_init = jax.random.normal(jax.random.PRNGKey(1), (128, 6, 3))
  calls = []
  out = samplers.sample_loop(two_point_denoiser(sched, calls), x_init, jax.random.PRNGKey(2), sched,
                             90, sampler=sampler)
  check_two_point_samples(out, calls, sched)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "heun"])
def test_positions_wait_for_their_turn(sampler):
  # One step from t_max to 0.9 with w = 2: the left positions move, the right ones (still at
  # t = 1 after clipping) keep their initial noise exactly. The identity denoiser makes the
  # returned x0_hat the state itself.
  sched = skewed(2.0)
  x_init = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3))
  times = jnp.array([sched.t_max, 0.9])
  out = samplers.sample_loop(lambda x, t, c: 0.5 * x, x_init, jax.random.PRNGKey(2), sched, 1,
                             sampler=sampler, times=times)
  still = np_position_times(np.array([0.9]), 6, 2.0)[0] >= sched.t_max
  assert still.any() and not still.all()
  np.testing.assert_array_equal(np.asarray(out)[:, still], 0.5 * np.asarray(x_init)[:, still])
  assert np.all(np.abs(np.asarray(out)[:, ~still] - 0.5 * np.asarray(x_init)[:, ~still]) > 0)


def test_clamp_applies_only_to_positions_below_clamp_max_t():
  sched = skewed(2.0)
  x_init = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3))
  denoise = lambda x, t, c: jnp.zeros_like(x)

  times = jnp.array([sched.t_max, 0.8])
  out = samplers.sample_loop(denoise, x_init, jax.random.PRNGKey(0), sched, 1, sampler="ddim",
                             clamp_fn=lambda x: x + 1.0, times=times, clamp_max_t=0.5)
  final_t = np.clip(np_position_times(np.array([0.8]), 6, 2.0)[0], sched.t_min, sched.t_max)
  assert 0 < np.sum(final_t <= 0.5) < 6
  np.testing.assert_allclose(np.asarray(out)[0, :, 0], np.where(final_t <= 0.5, 1.0, 0.0))


def test_denoiser_takes_per_position_log_snr():
  config = ModelConfig(vocab_size=30, seq_len=8, embed_dim=8, width=32, num_layers=2, num_heads=2,
                       mlp_dim=64)
  model = DiffusionLM(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,)))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8))
  log_snr = jnp.linspace(-6.0, 6.0, 8)[None].repeat(2, 0)
  out = model.apply(params, x, log_snr, method="denoise")
  assert out.x0_hat.shape == (2, 8, 8) and np.all(np.isfinite(out.x0_hat))
  # Every position's own noise level reaches the output: changing one position's log-SNR changes
  # the prediction at that position most.
  moved = model.apply(params, x, log_snr.at[:, 3].set(6.0), method="denoise")
  change = np.abs(np.asarray(moved.x0_hat - out.x0_hat)).sum(axis=(0, 2))
  assert change.argmax() == 3


class NeighbourModel:
  """Duck-typed model for `evaluation.context_use`: x0_hat at each position is computed either
  from the position's own latent or from its left neighbour's."""

  def __init__(self, use_neighbour):
    self.use_neighbour = use_neighbour
    self.config = types.SimpleNamespace(is_latent=False)

  def apply(self, params, *args, method, **kwargs):
    table = params["table"]
    if method == "embeddings":
      return table
    if method == "embed":
      return table[args[0]]
    if method == "decode_logits":
      return args[0] @ table.T
    x_t, log_snr = args
    gamma = jnp.sqrt(jax.nn.sigmoid(log_snr))[:, None, None]
    source = jnp.roll(x_t, 1, axis=1) if self.use_neighbour else x_t
    return DenoiserOutput(x0_hat=source / gamma, raw=None, logits=None)


@pytest.mark.slow
def test_context_use_diagnostic_separates_local_from_contextual_denoisers():
  table = 4.0 * jnp.eye(8)  # well-separated embeddings
  tokens = jnp.repeat(jnp.arange(4, 8)[:, None], 5, axis=1)  # every sequence repeats one token
  rows = {}
  for use_neighbour in (False, True):
    generator = types.SimpleNamespace(model=NeighbourModel(use_neighbour), params={"table": table},
                                      schedule=schedules.get_schedule("cosine"))
    rows[use_neighbour] = context_accuracy(generator, tokens, [0.2])[0]
  local, contextual = rows[False], rows[True]
  assert local["accuracy_own_context"] == local["accuracy_foreign_context"] == 1.0
  assert contextual["accuracy_own_context"] == 1.0
  assert contextual["accuracy_foreign_context"] <= 0.25  # the neighbour now comes from another sequence
  # Rounding with no network reads every token off a low-noise latent and about chance at log-SNR
  # -12 (8 tokens; gamma |e| = 0.01 against unit noise).
  assert local["accuracy_no_network"] == contextual["accuracy_no_network"] == 1.0
  assert local["accuracy_position_0"] == 1.0
  # Position 0 alone: the neighbour model reads it from the last position (same token here) and
  # positions 1 and 4 wrongly (3 of 5 right).
  ends_match = jnp.asarray([[4, 6, 6, 6, 4], [5, 7, 7, 7, 5]])
  shifted = context_accuracy(generator, ends_match, [0.2])[0]
  assert shifted["accuracy_position_0"] == 1.0 and abs(shifted["accuracy_own_context"] - 0.6) < 1e-6
  noisy = context_accuracy(generator, jnp.tile(tokens, (50, 1)), [0.9987])[0]
  assert noisy["log_snr"] < -11.0 and noisy["accuracy_no_network"] < 0.3
