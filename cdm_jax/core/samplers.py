"""Reverse-process samplers as one compiled loop (decoders and clamps: `rounding`; the options of a
sampling run: `sample_options`).

`sample_loop(denoise_fn, x_init, rng, schedule, num_steps, sampler)` runs `num_steps` updates from
t_max to t_min with `lax.scan`, then one last denoising at t_min, and returns that x0_hat (with a
position-skewed schedule, `schedule.position_times` gives every position its own t and s). The key of
step i is `fold_in(rng, i)`; `rng` may also be one key per example ([batch, 2]), which makes every
example's noise independent of how the batch is split over devices.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from cdm_jax.runtime import registry
from cdm_jax.core import schedules as schedules_lib
from cdm_jax.core.parameterization import eps_from_x0, expand_like as _b

Array = jax.Array
DenoiseFn = Callable[[Array, Array, Array], Array]  # (x_t, t [batch] or [batch, m], x0_selfcond) -> x0_hat


class StepInput(NamedTuple):
  x_t: Array          # [batch, m, d]
  x0_selfcond: Array  # previous step's x0_hat
  t: Array            # [batch], or [batch, m] with a position-skewed schedule
  s: Array            # like t, s <= t
  key: Array          # this step's key(s)


SAMPLERS = registry.Registry("sampler")
register = SAMPLERS.register


def _normal(key: Array, like: Array) -> Array:
  if key.ndim == 2:  # one key per example
    return jax.vmap(lambda k: jax.random.normal(k, like.shape[1:], like.dtype))(key)
  return jax.random.normal(key, like.shape, like.dtype)


def _variances(alpha_sigma_s, alpha_sigma_t):
  """var_ts of q(x_t | x_s) = N(gamma_t / gamma_s x_s, var_ts), and the posterior variance of
  q(x_s | x_t, x0): var_ts sigma_s^2 / sigma_t^2."""
  (gamma_s, sigma_s), (gamma_t, sigma_t) = alpha_sigma_s, alpha_sigma_t
  var_ts = sigma_t**2 - (gamma_t / gamma_s)**2 * sigma_s**2
  return var_ts, var_ts * sigma_s**2 / sigma_t**2


def ddpm_posterior(x_t, x0_hat, alpha_sigma_s, alpha_sigma_t):
  """Mean and variance of q(x_s | x_t, x0 = x0_hat) for s < t, for any (gamma, sigma) pairs."""
  (gamma_s, sigma_s), (gamma_t, sigma_t) = alpha_sigma_s, alpha_sigma_t
  var_ts, var = _variances(alpha_sigma_s, alpha_sigma_t)
  mean = (_b(gamma_t / gamma_s * sigma_s**2 / sigma_t**2, x_t) * x_t
          + _b(gamma_s * var_ts / sigma_t**2, x_t) * x0_hat)
  return mean, var


def ddim_update(x_t, x0_hat, alpha_sigma_s, alpha_sigma_t, *, eta: float = 0.0, noise=None):
  """DDIM (Song et al. 2021): move the signal to level s and keep the implied noise eps_hat, of
  which a share is redrawn: x_s = gamma_s x0_hat + sqrt(sigma_s^2 - v) eps_hat + sqrt(v) noise with
  v = eta^2 x the DDPM posterior variance. eta = 0 is deterministic (the default; `noise` unused),
  eta = 1 has DDPM's posterior mean and variance."""
  (gamma_s, sigma_s), (gamma_t, sigma_t) = alpha_sigma_s, alpha_sigma_t
  eps_hat = eps_from_x0(x_t, x0_hat, gamma_t, sigma_t)
  if not eta:
    return _b(gamma_s, x_t) * x0_hat + _b(sigma_s, x_t) * eps_hat
  _, var = _variances(alpha_sigma_s, alpha_sigma_t)  # DDPM's posterior variance
  fresh = eta**2 * jnp.maximum(var, 0.0)
  kept = jnp.sqrt(jnp.maximum(sigma_s**2 - fresh, 0.0))
  return (_b(gamma_s, x_t) * x0_hat + _b(kept, x_t) * eps_hat
          + _b(jnp.sqrt(fresh), x_t) * noise)


@register("ddpm")
def ddpm_step(denoise, inp: StepInput, schedule):
  x0_hat = denoise(inp.x_t, inp.t, inp.x0_selfcond)
  mean, var = ddpm_posterior(inp.x_t, x0_hat, schedule.alpha_sigma(inp.s),
                             schedule.alpha_sigma(inp.t))
  return mean + _b(jnp.sqrt(jnp.maximum(var, 0.0)), mean) * _normal(inp.key, mean), x0_hat


@register("renoise")
def renoise_step(denoise, inp: StepInput, schedule):
  """q-sampling: x_s ~ q(x_s | x0 = x0_hat) = N(gamma_s x0_hat, sigma_s^2 I), with fresh noise. x_t
  enters only through x0_hat, so a step cannot carry the previous step's off-manifold noise along
  (the re-noising of Shabalin et al. 2026, here at every step)."""
  x0_hat = denoise(inp.x_t, inp.t, inp.x0_selfcond)
  gamma_s, sigma_s = schedule.alpha_sigma(inp.s)
  return _b(gamma_s, x0_hat) * x0_hat + _b(sigma_s, x0_hat) * _normal(inp.key, x0_hat), x0_hat


@register("ddim")
def ddim_step(denoise, inp: StepInput, schedule, eta: float = 0.0):
  x0_hat = denoise(inp.x_t, inp.t, inp.x0_selfcond)
  noise = _normal(inp.key, x0_hat) if eta else None
  return ddim_update(inp.x_t, x0_hat, schedule.alpha_sigma(inp.s), schedule.alpha_sigma(inp.t),
                     eta=eta, noise=noise), x0_hat


def _ode_velocity(schedule, x_t, x0_hat, t):
  """dx/dt of the probability-flow ODE: gamma'(t) x0_hat + sigma'(t) eps_hat."""
  gamma_t, sigma_t = schedule.alpha_sigma(t)
  eps_hat = eps_from_x0(x_t, x0_hat, gamma_t, sigma_t)
  return _b(schedule.dgamma_dt(t), x_t) * x0_hat + _b(schedule.dsigma_dt(t), x_t) * eps_hat


@register("euler")
def euler_step(denoise, inp: StepInput, schedule):
  x0_hat = denoise(inp.x_t, inp.t, inp.x0_selfcond)
  velocity = _ode_velocity(schedule, inp.x_t, x0_hat, inp.t)
  return inp.x_t + _b(inp.s - inp.t, inp.x_t) * velocity, x0_hat


@register("heun")
def heun_step(denoise, inp: StepInput, schedule):
  """Heun's second-order method (trapezoid with an Euler predictor): two evaluations per step.

  A step into the last time stays Euler (as in Karras et al. 2022): there sigma(s) is tiny and the
  corrector's eps_hat = (x - gamma x0_hat) / sigma(s) would amplify any x0_hat error. With a
  position-skewed schedule each position reaches its last time at its own step: per position.
  """
  x0_hat = denoise(inp.x_t, inp.t, inp.x0_selfcond)
  velocity = _ode_velocity(schedule, inp.x_t, x0_hat, inp.t)
  dt = _b(inp.s - inp.t, inp.x_t)
  x_pred = inp.x_t + dt * velocity
  batch, length = inp.x_t.shape[:2]
  final = jnp.maximum(schedule.position_times(jnp.full((batch,), schedule.t_min), length),
                      schedule.t_min)  # each position's last time, like s
  into_last = _b(inp.s <= final * (1.0 + 1e-4) + 1e-7, inp.x_t)

  def corrected(_):
    x0_pred = denoise(x_pred, inp.s, x0_hat)
    velocity_pred = _ode_velocity(schedule, x_pred, x0_pred, inp.s)
    x_corrected = inp.x_t + dt * 0.5 * (velocity + velocity_pred)
    return jnp.where(into_last, x_pred, x_corrected), jnp.where(into_last, x0_hat, x0_pred)

  return jax.lax.cond(jnp.all(into_last), lambda _: (x_pred, x0_hat), corrected, None)


def evaluations_per_step(sampler: str) -> int:
  return 2 if sampler == "heun" else 1


def check_ddim_eta(sampler: str, eta: float):
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"ddim_eta must lie in [0, 1], got {eta}.")
  if eta and sampler != "ddim":
    raise ValueError(f"ddim_eta applies to sampler='ddim' only, got sampler={sampler!r}.")


def _step_function(sampler: str, ddim_eta: float):
  check_ddim_eta(sampler, ddim_eta)
  step_fn = SAMPLERS.get(sampler)
  return functools.partial(step_fn, eta=float(ddim_eta)) if ddim_eta else step_fn


def _renoise_within(x_s, x0_hat, inp: StepInput, schedule, interval):
  """x_s where t lies outside [lo, hi]; a fresh q-sample gamma_s x0_hat + sigma_s eps inside."""
  lo, hi = interval
  key = (jax.vmap(lambda k: jax.random.fold_in(k, 7))(inp.key) if inp.key.ndim == 2
         else jax.random.fold_in(inp.key, 7))  # not the sampler's own noise of this step
  gamma_s, sigma_s = schedule.alpha_sigma(inp.s)
  q_sample = _b(gamma_s, x0_hat) * x0_hat + _b(sigma_s, x0_hat) * _normal(key, x0_hat)
  inside = (inp.t >= lo) & (inp.t <= hi)
  return jnp.where(_b(inside, x_s), q_sample, x_s)


def sample_loop(denoise_fn: DenoiseFn, x_init: Array, rng: Array, schedule: schedules_lib.Schedule,
                num_steps: int, *, sampler: str = "ddim",
                clamp_fn: Callable[[Array], Array] | None = None, times: Array | None = None,
                clamp_max_t: float = 1.0, renoise_interval: tuple[float, float] | None = None,
                ddim_eta: float = 0.0) -> Array:
  """Runs the reverse process from `x_init` (x at t_max) and returns x0_hat [batch, m, d].

  Args:
    denoise_fn: pure `(x_t, t [batch], x0_selfcond) -> x0_hat`.
    rng: a raw key [2] or one key per example [batch, 2].
    clamp_fn: optional map applied to every x0_hat before it is used (e.g. nearest embedding).
    times: optional decreasing grid [num_steps + 1] (e.g. `schedules.time_grid(..., warp)`).
    clamp_max_t: clamp only at times t <= clamp_max_t. Early (noisy) x0_hat hedge toward the
      frequent tokens, and clamping them commits to PAD/EOS; late clamping removes the drift that
      unclamped x0_hat errors accumulate along the trajectory.
    renoise_interval: optional (lo, hi): steps from a time t with lo <= t <= hi (per position with a
      skewed schedule) replace the sampler's x_s by q-sampling from x0_hat, x_s ~ N(gamma_s x0_hat,
      sigma_s^2 I), as Shabalin et al. (2026) re-noise only in the narrow interval where DDPM
      leaves the data manifold; elsewhere the sampler's own update runs.
    ddim_eta: sampler "ddim" only: the share of each step's noise drawn afresh (0: deterministic,
      1: DDPM's posterior), between the probability-flow ODE and ancestral sampling.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  step_fn = _step_function(sampler, ddim_eta)
  batch, length = x_init.shape[:2]
  if times is None:
    times = schedules_lib.time_grid(schedule, num_steps)
  if times.shape != (num_steps + 1,):
    raise ValueError(f"times must have shape [{num_steps + 1}], got {times.shape}.")

  def denoise(x_t, t, x0_selfcond):
    x0_hat = denoise_fn(x_t, t, x0_selfcond)
    if clamp_fn is None:
      return x0_hat
    if clamp_max_t >= 1.0:
      return clamp_fn(x0_hat)
    # A cond skips the vocabulary-sized clamp while every position is above clamp_max_t; then only
    # positions at or below it are clamped (all of them unless the schedule is position-skewed).
    return jax.lax.cond(jnp.min(t) <= clamp_max_t,
                        lambda x: jnp.where(_b(t <= clamp_max_t, x), clamp_fn(x), x),
                        lambda x: x, x0_hat)

  def fold(i):
    if rng.ndim == 2:
      return jax.vmap(lambda k: jax.random.fold_in(k, i))(rng)
    return jax.random.fold_in(rng, i)

  def body(carry, i):
    x_t, x0_selfcond = carry
    t, s = (schedule.position_times(jnp.full((batch,), times[j]), length) for j in (i, i + 1))
    inp = StepInput(x_t, x0_selfcond, t, s, fold(i))
    x_s, x0_hat = step_fn(denoise, inp, schedule)
    if renoise_interval is not None:
      x_s = _renoise_within(x_s, x0_hat, inp, schedule, renoise_interval)
    return (x_s, x0_hat), None

  (x_last, x0_selfcond), _ = jax.lax.scan(
      body, (x_init, jnp.zeros_like(x_init)), jnp.arange(num_steps))
  return denoise(x_last, schedule.position_times(jnp.full((batch,), times[-1]), length), x0_selfcond)
