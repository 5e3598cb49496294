import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.core import rounding, sample_options, samplers
from cdm_jax.core import schedules
from cdm_jax.core import vocab_ops


def np_posterior(x_t, x0, g_s, s_s, g_t, s_t):
  """q(x_s | x_t, x0) by Gaussian conditioning in float64: x_t = g_ts x_s + s_ts e."""
  g_ts = g_t / g_s
  v_ts = s_t**2 - g_ts**2 * s_s**2
  precision = 1 / s_s**2 + g_ts**2 / v_ts
  var = 1 / precision
  mean = var * (g_s * x0 / s_s**2 + g_ts * x_t / v_ts)
  return mean, var


@pytest.mark.parametrize("t,s", [(0.9, 0.7), (0.5, 0.45), (0.2, 0.01)])
def test_ddpm_posterior_and_ddim_match_numpy(t, s):
  rng = np.random.default_rng(0)
  x_t, x0 = rng.normal(size=(2, 3, 4, 5))
  g_t, s_t = np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)
  g_s, s_s = np.cos(np.pi * s / 2), np.sin(np.pi * s / 2)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  as_b = lambda v: jnp.full((3,), v, jnp.float32)
  mean, var = samplers.ddpm_posterior(f32(x_t), f32(x0), (as_b(g_s), as_b(s_s)), (as_b(g_t), as_b(s_t)))
  ref_mean, ref_var = np_posterior(x_t, x0, g_s, s_s, g_t, s_t)
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(var, np.full(3, ref_var), rtol=1e-4)
  ddim = samplers.ddim_update(f32(x_t), f32(x0), (as_b(g_s), as_b(s_s)), (as_b(g_t), as_b(s_t)))
  eps = (x_t - g_t * x0) / s_t
  np.testing.assert_allclose(ddim, g_s * x0 + s_s * eps, rtol=1e-4, atol=1e-5)


CENTRE = np.array([1.5, -0.5, 1.0])  # data: every position is +CENTRE (prob. P_PLUS) or -CENTRE
P_PLUS = 0.8


def two_point_denoiser(sched, calls=None):
  """The exact E[x0 | x_t] for positions drawn independently from {+c w.p. p, -c w.p. 1 - p}.

  It depends on x_t (unlike an oracle returning x0), so a sampler that ignores or corrupts its
  state ends at the wrong mixture. t may be [batch] or [batch, m]; with `calls`, every call's
  (t, x_t) is appended to it."""
  centre = jnp.asarray(CENTRE, jnp.float32)

  def denoise(x_t, t, x0_selfcond):
    del x0_selfcond
    if calls is not None:
      jax.debug.callback(lambda t, x: calls.append((np.asarray(t), np.asarray(x))), t, x_t)
    g, s = sched.alpha_sigma(t)
    g, s = (v.reshape(v.shape + (1,) * (3 - v.ndim)) for v in (g, s))
    log_odds = np.log(P_PLUS / (1 - P_PLUS)) + 2.0 * g * (x_t @ centre)[..., None] / s**2
    return (2.0 * jax.nn.sigmoid(log_odds) - 1.0) * centre

  return denoise


def check_two_point_samples(out, calls, sched):
  """Every sample sits on +c or -c, +c has its probability, and the state the final denoising saw
  was gamma(t_min) times that point (up to sigma(t_min) noise)."""
  out = np.asarray(out, np.float64)
  sign = np.sign(out @ CENTRE)
  np.testing.assert_allclose(out, sign[..., None] * CENTRE, atol=1e-3)
  assert abs(np.mean(sign > 0) - P_PLUS) < 0.06, np.mean(sign > 0)
  jax.effects_barrier()
  t_last, x_last = calls[-1]
  assert np.all(t_last <= 4 * sched.t_min), t_last.max()  # the final denoising is at (about) t_min
  gamma_last = np.asarray(sched.gamma(jnp.asarray(t_last)), np.float64)
  np.testing.assert_allclose(x_last, gamma_last.reshape(t_last.shape + (1,) * (3 - t_last.ndim)) * out,
                             atol=0.01)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "heun", "ddpm"])
def test_exact_denoiser_samples_the_two_point_data(sampler):
  sched = schedules.get_schedule("cosine")
  x_init = jax.random.normal(jax.random.PRNGKey(1), (256, 4, 3))
  calls = []
  out = samplers.sample_loop(two_point_denoiser(sched, calls), x_init, jax.random.PRNGKey(2), sched,
                             50, sampler=sampler)
  check_two_point_samples(out, calls, sched)


def gaussian_setup(num=512):
  """Data x0 ~ N(mu, s0^2 I): the optimal denoiser and the ODE's endpoint are known in closed form."""
  sched = schedules.get_schedule("cosine")
  mu, s0 = 1.5, 0.5
  x_init = jax.random.normal(jax.random.PRNGKey(1), (num, 4, 2))

  def optimal(x_t, t, x0_selfcond):
    g, s = sched.alpha_sigma(t)
    g, s = g[:, None, None], s[:, None, None]
    return mu + g * s0**2 / (g**2 * s0**2 + s**2) * (x_t - g * mu)

  g1, sig1 = (np.float64(v) for v in sched.alpha_sigma(jnp.float32(1.0)))
  g0, sig0 = (np.float64(v) for v in sched.alpha_sigma(jnp.float32(0.0)))
  z = (np.asarray(x_init, np.float64) - g1 * mu) / np.sqrt(g1**2 * s0**2 + sig1**2)
  x_end = g0 * mu + np.sqrt(g0**2 * s0**2 + sig0**2) * z  # the flow keeps each z-score
  expected = mu + g0 * s0**2 / (g0**2 * s0**2 + sig0**2) * (x_end - g0 * mu)
  return sched, optimal, x_init, expected, (mu, s0)


def test_ode_samplers_follow_the_probability_flow():
  sched, optimal, x_init, expected, _ = gaussian_setup()
  err = {}
  for sampler in ["ddim", "euler", "heun"]:
    out = samplers.sample_loop(optimal, x_init, jax.random.PRNGKey(0), sched, 50, sampler=sampler)
    err[sampler] = float(np.max(np.abs(np.asarray(out, np.float64) - expected)))
  # Heun is second order except for its last (Euler) step into t_min.
  assert err["heun"] < 5e-3, err
  assert err["ddim"] < 0.1 and err["euler"] < 0.05, err
  assert err["heun"] < err["euler"] / 5, err
  # DDIM and Euler are first order: four times the steps cut the error about four times.
  for sampler in ["ddim", "euler"]:
    out = samplers.sample_loop(optimal, x_init, jax.random.PRNGKey(0), sched, 200, sampler=sampler)
    assert float(np.max(np.abs(np.asarray(out, np.float64) - expected))) < err[sampler] / 3


def test_ddpm_samples_have_the_data_distribution():
  sched, optimal, x_init, _, (mu, s0) = gaussian_setup(num=4096)
  out = np.asarray(samplers.sample_loop(optimal, x_init, jax.random.PRNGKey(0), sched, 100, sampler="ddpm"))
  assert abs(out.mean() - mu) < 0.02 and abs(out.std() - s0) < 0.02


def test_per_example_keys_do_not_depend_on_the_batch_split():
  sched, optimal, x_init, _, _ = gaussian_setup(num=8)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(3), i))(jnp.arange(8))
  whole = samplers.sample_loop(optimal, x_init, keys, sched, 10, sampler="ddpm")
  halves = [samplers.sample_loop(optimal, x_init[i:i + 4], keys[i:i + 4], sched, 10, sampler="ddpm")
            for i in (0, 4)]
  np.testing.assert_allclose(whole, np.concatenate(halves), atol=1e-6)


@pytest.mark.parametrize("sampler", ["ddpm", "heun"])
def test_sample_loop_traces_the_denoiser_a_fixed_number_of_times(sampler):
  """The loop is one `lax.scan`: the program (and the denoiser's traces) do not grow with the step
  count, as a Python loop over steps would make them."""
  sched = schedules.get_schedule("cosine")
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 3))
  counts = {}
  for num_steps in (3, 40):
    calls = []

    def denoise(x, t, c):
      calls.append(t.shape)
      return jnp.tanh(x @ w + c)

    jaxpr = jax.make_jaxpr(lambda x, rng: samplers.sample_loop(
        denoise, x, rng, sched, num_steps, sampler=sampler))(jnp.ones((2, 5, 3)), jax.random.PRNGKey(0))
    counts[num_steps] = (len(calls), len(str(jaxpr)))
  assert counts[3][0] == counts[40][0] == 1 + samplers.evaluations_per_step(sampler), counts
  assert counts[40][1] < 1.1 * counts[3][1], counts


def test_decoders_and_clamps():
  table = jnp.array([[3.0, 0.0], [0.0, 1.0], [-2.0, -2.0]])
  x = jnp.array([[[2.5, 0.1], [0.1, 0.6], [0.4, 0.1]]])
  np.testing.assert_array_equal(rounding.decode(x, table, method="l2"), [[0, 1, 1]])
  # A shrunk x0_hat ([0.4, 0.1], pointing at row 0) is ranked correctly by the read-out, not by L2.
  np.testing.assert_array_equal(rounding.decode(x, table, method="readout"), [[0, 1, 0]])
  np.testing.assert_array_equal(rounding.decode(x, table, method="cosine"), [[0, 1, 0]])
  hard = rounding.make_clamp_fn("hard", table)(x)
  np.testing.assert_allclose(hard, table[jnp.array([[0, 1, 0]])])
  soft = rounding.make_clamp_fn("soft", table, temperature=1e-3)(x)
  np.testing.assert_allclose(soft, hard, atol=1e-4)
  with pytest.raises(ValueError, match="Unknown sampler"):
    samplers.sample_loop(lambda x, t, c: x, x, jax.random.PRNGKey(0), schedules.get_schedule("cosine"),
                         3, sampler="bogus")


@pytest.mark.parametrize("rows", [7, vocab_ops.ROW_BLOCK, 3 * vocab_ops.ROW_BLOCK + 5])
def test_blocked_decoders_match_float64_brute_force(rows):
  """Row-blocked decoders and the soft clamp against [rows, vocab, d] distances in float64,
  for row counts below, at and not a multiple of the block (padding is dropped)."""
  rng = np.random.default_rng(rows)
  table = rng.normal(size=(37, 6)) * rng.uniform(0.5, 2.0, size=(37, 1))
  bias = rng.normal(size=37)
  x = rng.normal(size=(rows, 2, 6))
  j = lambda a: jnp.asarray(a, jnp.float32)
  l2 = np.argmin(np.sum((x[:, :, None, :] - table) ** 2, axis=-1), axis=-1)
  logits = x @ table.T + bias
  unit = table / np.linalg.norm(table, axis=-1, keepdims=True)
  np.testing.assert_array_equal(rounding.decode(j(x), j(table), method="l2"), l2)
  np.testing.assert_array_equal(rounding.decode(j(x), j(table), j(bias), "readout"),
                                np.argmax(logits, axis=-1))
  np.testing.assert_array_equal(rounding.decode(j(x), j(table), method="cosine"),
                                np.argmax(x @ unit.T, axis=-1))
  np.testing.assert_allclose(rounding.make_clamp_fn("hard", j(table), decoder="l2")(j(x)), table[l2],
                             rtol=1e-6)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(rounding.make_clamp_fn("soft", j(table), j(bias))(j(x)), probs @ table,
                             rtol=1e-4, atol=1e-5)


def test_bfloat16_clamp_is_a_bf16_dot_and_agrees_away_from_ties():
  """operand_dtype=bfloat16 (the model's matmul_dtype): the clamp's vocabulary matmul lowers to a
  bf16-operand dot; on latents near one embedding (no near-ties) it snaps to the same rows."""
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(300, 16)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=300), jnp.float32)
  ids = rng.integers(0, 300, size=(3, 50))
  x = table[ids] + 0.05 * jnp.asarray(rng.normal(size=(3, 50, 16)), jnp.float32)
  for decoder in ("l2", "readout", "cosine"):
    exact = rounding.make_clamp_fn("hard", table, bias, decoder=decoder)
    fast = rounding.make_clamp_fn("hard", table, bias, decoder=decoder, operand_dtype=jnp.bfloat16)
    assert "xbf16>) -> tensor<" in jax.jit(fast).lower(x).as_text()
    assert "bf16" not in jax.jit(exact).lower(x).as_text()
    np.testing.assert_array_equal(fast(x), exact(x))
  soft = rounding.make_clamp_fn("soft", table, bias, operand_dtype=jnp.bfloat16)(x)
  np.testing.assert_allclose(soft, rounding.make_clamp_fn("soft", table, bias)(x), atol=0.05)


def test_decoder_ties_pick_the_first_index():
  table = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  np.testing.assert_array_equal(rounding.decode(jnp.array([[2.0, 0.0]]), table), [0])
  # A NaN latent matches no score: the last index, not an out-of-range one.
  np.testing.assert_array_equal(rounding.decode(jnp.array([[jnp.nan, 0.0], [0.0, 3.0]]), table), [2, 2])


def test_clamp_applies_only_below_clamp_max_t():
  sched = schedules.get_schedule("cosine")
  x_init = jnp.zeros((2, 3, 2))

  def denoise(x_t, t, x0_selfcond):
    return jnp.zeros_like(x_t)

  def ones(x):
    return jnp.ones_like(x)

  always = samplers.sample_loop(denoise, x_init, jax.random.PRNGKey(0), sched, 4, sampler="ddim", clamp_fn=ones)
  never = samplers.sample_loop(denoise, x_init, jax.random.PRNGKey(0), sched, 4, sampler="ddim", clamp_fn=ones,
                               clamp_max_t=0.0)
  np.testing.assert_allclose(always, 1.0)
  np.testing.assert_allclose(never, 0.0)
  # The self-conditioning input of each step is the previous step's (possibly clamped) x0_hat:
  # with clamp_max_t = 0.6 on the grid t = 1, 0.75, 0.5, 0.25, t_min, only x0_hat from t <= 0.6
  # (t = 0.5 onwards) is clamped.
  inputs = []

  def record(x_t, t, x0_selfcond):
    jax.debug.callback(lambda t, c: inputs.append((float(t[0]), float(c.mean()))), t, x0_selfcond)
    return jnp.zeros_like(x_t)

  jax.block_until_ready(samplers.sample_loop(record, x_init, jax.random.PRNGKey(0), sched, 4, sampler="ddim",
                                             clamp_fn=ones, clamp_max_t=0.6))
  jax.effects_barrier()
  assert [c for _, c in inputs] == [0.0, 0.0, 0.0, 1.0, 1.0]
  np.testing.assert_allclose([t for t, _ in inputs], [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-3)


def test_renoise_step_draws_from_q_given_x0_hat():
  # x_s ~ N(gamma_s x0_hat, sigma_s^2): x_t enters only through the denoiser.
  sched = schedules.get_schedule("cosine")
  x0_hat = jnp.asarray([[[0.7, -1.2]]]).repeat(20000, axis=0)
  x_t = 5.0 + jnp.zeros_like(x0_hat)  # far from x0_hat: it must not leak into x_s
  t, s = jnp.full((20000,), 0.8), jnp.full((20000,), 0.6)
  inp = samplers.StepInput(x_t=x_t, x0_selfcond=x0_hat, t=t, s=s, key=jax.random.PRNGKey(0))
  x_s, returned = samplers.SAMPLERS.get("renoise")(lambda x, tt, sc: x0_hat, inp, sched)
  gamma_s, sigma_s = (np.float64(v) for v in sched.alpha_sigma(jnp.float32(0.6)))
  x_s = np.asarray(x_s, np.float64)
  np.testing.assert_allclose(x_s.mean(axis=0)[0], gamma_s * np.array([0.7, -1.2]), atol=0.02)
  np.testing.assert_allclose(x_s.std(axis=0)[0], [sigma_s, sigma_s], rtol=0.03)
  assert returned is x0_hat


def test_renoise_interval_q_samples_inside_and_runs_the_sampler_outside():
  """Three DDIM steps on the grid 0.9 > 0.6 > 0.3 > 0.05 with re-noising for t in [0.5, 0.7]:
  only the middle step (t = 0.6) is a q-sample from x0_hat; checked in float64 against NumPy."""
  sched = schedules.get_schedule("cosine")
  times = jnp.array([0.9, 0.6, 0.3, 0.05])
  denoise = lambda x_t, t, c: 0.5 * x_t + 0.1 * c + 0.2  # depends on x_t and the self-conditioning
  x_init = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4))
  rng = jax.random.PRNGKey(5)
  out = samplers.sample_loop(denoise, x_init, rng, sched, 3, sampler="ddim", times=times,
                             renoise_interval=(0.5, 0.7))
  ga = lambda t: tuple(float(v) for v in sched.alpha_sigma(jnp.float32(t)))
  x, c = np.asarray(x_init, np.float64), np.zeros(x_init.shape)
  for i in range(3):
    x0 = 0.5 * x + 0.1 * c + 0.2
    (g_t, s_t), (g_s, s_s) = ga(times[i]), ga(times[i + 1])
    if i == 1:
      key = jax.random.fold_in(jax.random.fold_in(rng, i), 7)
      x = g_s * x0 + s_s * np.asarray(jax.random.normal(key, x.shape), np.float64)
    else:
      x = g_s * x0 + s_s * (x - g_t * x0) / s_t
    c = x0
  np.testing.assert_allclose(out, 0.5 * x + 0.1 * c + 0.2, rtol=1e-4, atol=1e-5)
  plain = samplers.sample_loop(denoise, x_init, rng, sched, 3, sampler="ddim", times=times)
  assert not np.allclose(out, plain, atol=1e-3)
  empty = sample_options.SampleConfig(renoise_min_t=0.7, renoise_max_t=0.5)
  assert empty.renoise_interval is None
  assert sample_options.SampleConfig(renoise_min_t=0.5, renoise_max_t=0.7).renoise_interval == (0.5, 0.7)
  with pytest.raises(ValueError, match="renoise_min_t"):
    sample_options.SampleConfig(renoise_max_t=1.5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_eta_update_matches_numpy_and_has_ddpms_posterior_at_one(eta):
  rng = np.random.default_rng(1)
  x_t, x0, noise = rng.normal(size=(3, 3, 4, 5))
  (g_t, s_t), (g_s, s_s) = ((np.cos(np.pi * u / 2), np.sin(np.pi * u / 2)) for u in (0.8, 0.55))
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  as_b = lambda v: jnp.full((3,), v, jnp.float32)
  out = np.asarray(samplers.ddim_update(f32(x_t), f32(x0), (as_b(g_s), as_b(s_s)),
                                        (as_b(g_t), as_b(s_t)), eta=eta, noise=f32(noise)),
                   np.float64)
  ref_mean, ref_var = np_posterior(x_t, x0, g_s, s_s, g_t, s_t)
  eps = (x_t - g_t * x0) / s_t
  fresh = eta**2 * ref_var
  np.testing.assert_allclose(out, g_s * x0 + np.sqrt(s_s**2 - fresh) * eps + np.sqrt(fresh) * noise,
                             rtol=1e-4, atol=1e-5)
  if eta == 1.0:  # DDPM: the posterior mean plus its standard deviation times the noise
    np.testing.assert_allclose(out, ref_mean + np.sqrt(ref_var) * noise, rtol=1e-4, atol=1e-5)


def test_ddim_eta_runs_between_the_flow_and_ancestral_sampling():
  sched, optimal, x_init, expected, _ = gaussian_setup(num=64)
  key = jax.random.PRNGKey(4)
  run = lambda sampler, eta=0.0: np.asarray(samplers.sample_loop(
      optimal, x_init, key, sched, 40, sampler=sampler, ddim_eta=eta), np.float64)
  np.testing.assert_array_equal(run("ddim", 0.0), run("ddim"))
  np.testing.assert_allclose(run("ddim", 1.0), run("ddpm"), atol=2e-3)  # same keys, same draws
  half = run("ddim", 0.5)
  assert np.abs(half - expected).max() > 0.05  # it leaves the flow's deterministic endpoint
  assert np.abs(half - run("ddpm")).max() > 0.05
  out = samplers.sample_loop(two_point_denoiser(sched, calls := []),
                             jax.random.normal(jax.random.PRNGKey(1), (256, 4, 3)),
                             jax.random.PRNGKey(2), sched, 50, sampler="ddim", ddim_eta=0.5)
  check_two_point_samples(out, calls, sched)
  with pytest.raises(ValueError, match="sampler='ddim' only"):
    sample_options.SampleConfig(sampler="ddpm", ddim_eta=0.5)
  with pytest.raises(ValueError, match=r"ddim_eta must lie in \[0, 1\]"):
    sample_options.SampleConfig(ddim_eta=1.5)
  with pytest.raises(ValueError, match="sampler='ddim' only"):
    samplers.sample_loop(optimal, x_init, key, sched, 4, sampler="euler", ddim_eta=0.3)
