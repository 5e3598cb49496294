"""Noise schedules in continuous time and learned time warping.

Every schedule is variance preserving and defined through its log-SNR `lambda(t) = 2 log(gamma/sigma)`:
`gamma^2 = sigmoid(lambda)`, `sigma^2 = sigmoid(-lambda)`. Time is clipped to `[t_min, t_max]` so
that `lambda` stays finite. Derivatives come from `jax.jvp`, so they are exact for every schedule.

With `position_skew = w > 0` the positions of a sequence no longer share one time: at global time
`t` position `n` of `L` sits at `clip((1 + w) t - w (1 - n / (L - 1)), 0, 1)`, so left positions
are denoised first and each position spends `1 / (1 + w)` of the global time in transit (a
left-to-right schedule in the spirit of AR-Diffusion, Wu et al. 2023). All positions are pure noise
at t = 1 and clean at t = 0, so the prior and the likelihood bound keep their form.
"""

import dataclasses
import math
from typing import Callable

import flax
import jax
import jax.numpy as jnp

from cdm_jax.runtime import registry

Array = jax.Array

SCHEDULES = registry.Registry("schedule")
register = SCHEDULES.register


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A noise schedule: `x_t = gamma(t) x0 + sigma(t) eps`, with `gamma^2 + sigma^2 = 1`."""
  name: str
  raw_log_snr: Callable[[Array], Array]  # unclipped lambda(t); decreasing in t
  t_min: float
  t_max: float
  position_skew: float = 0.0  # w: 0 = every position shares t; > 0 = left-to-right (see above)

  def clip(self, t):
    return jnp.clip(jnp.asarray(t, jnp.float32), self.t_min, self.t_max)

  def log_snr(self, t):
    return self.raw_log_snr(self.clip(t))

  def gamma(self, t):
    return jnp.sqrt(jax.nn.sigmoid(self.log_snr(t)))

  def sigma(self, t):
    return jnp.sqrt(jax.nn.sigmoid(-self.log_snr(t)))

  def alpha_sigma(self, t):
    """`(gamma(t), sigma(t))` from one log-SNR evaluation."""
    log_snr = self.log_snr(t)
    return jnp.sqrt(jax.nn.sigmoid(log_snr)), jnp.sqrt(jax.nn.sigmoid(-log_snr))

  def skewed_times(self, t, length: int):
    """Unclipped per-position times [batch, length] for global times t [batch] (position_skew > 0)."""
    w = self.position_skew
    rel = jnp.arange(length, dtype=jnp.float32) / max(length - 1, 1)  # 0 = leftmost
    return (1.0 + w) * jnp.asarray(t, jnp.float32)[..., None] - w * (1.0 - rel)

  def position_times(self, t, length: int):
    """Times of each position: t [batch] itself when position_skew = 0, else [batch, length]."""
    if not self.position_skew:
      return t
    return jnp.clip(self.skewed_times(t, length), 0.0, 1.0)

  def _derivative(self, fn, t):
    t = self.clip(t)
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]

  def dlog_snr_dt(self, t):
    """d lambda / dt (negative); inside `[t_min, t_max]` only, the clipped parts are constant."""
    return self._derivative(self.raw_log_snr, t)

  def dgamma_dt(self, t):
    return self._derivative(lambda u: jnp.sqrt(jax.nn.sigmoid(self.raw_log_snr(u))), t)

  def dsigma_dt(self, t):
    return self._derivative(lambda u: jnp.sqrt(jax.nn.sigmoid(-self.raw_log_snr(u))), t)


def time_at_log_snr(schedule: Schedule, log_snr: float) -> float:
  """The t in [t_min, t_max] where the schedule's log-SNR equals `log_snr` (clipped), by bisection."""
  lo, hi = schedule.t_min, schedule.t_max
  with jax.ensure_compile_time_eval():  # concrete even when called while tracing
    for _ in range(60):  # log-SNR decreases in t
      mid = 0.5 * (lo + hi)
      if float(schedule.log_snr(mid)) > log_snr:
        lo = mid
      else:
        hi = mid
  return 0.5 * (lo + hi)


def get_schedule(name: str, t_min: float | None = None, t_max: float | None = None,
                 **kwargs) -> Schedule:
  """Returns the named schedule; `kwargs` go to its factory (e.g. `d` for `tan_d`)."""
  schedule = SCHEDULES.get(name)(**kwargs)
  if t_min is not None or t_max is not None:
    schedule = dataclasses.replace(
        schedule,
        t_min=schedule.t_min if t_min is None else float(t_min),
        t_max=schedule.t_max if t_max is None else float(t_max))
  if not 0.0 <= schedule.t_min < schedule.t_max <= 1.0:
    raise ValueError(f"Need 0 <= t_min < t_max <= 1, got {schedule.t_min}, {schedule.t_max}.")
  return schedule


# The `config.diffusion` fields each schedule's factory reads (factory argument -> field). A new
# schedule needs its factory below, its entry here, and its fields in configs/default.py.
CONFIG_FIELDS = {"tan_d": {"d": "tan_d"},
                 "ve": {"sigma_min": "ve_sigma_min", "sigma_max": "ve_sigma_max"}}


def from_config(diffusion_config) -> Schedule:
  """The schedule a config's `diffusion` block names, with its fields and position skew."""
  name = diffusion_config.schedule
  kwargs = {arg: diffusion_config[field] for arg, field in CONFIG_FIELDS.get(name, {}).items()}
  # older workdirs' configs lack position_skew
  return with_position_skew(get_schedule(name, **kwargs), diffusion_config.get("position_skew", 0.0))


def with_position_skew(schedule: Schedule, position_skew: float) -> Schedule:
  """`schedule` with left-to-right per-position times (see the module docstring); 0 turns it off."""
  if not position_skew >= 0.0:
    raise ValueError(f"position_skew must be >= 0, got {position_skew}.")
  return dataclasses.replace(schedule, position_skew=float(position_skew))


def _log_tan_half_pi(t):
  return jnp.log(jnp.tan(0.5 * math.pi * t))


@register("cosine")
def cosine(t_min: float = 1e-4, t_max: float = 1.0 - 1e-4) -> Schedule:
  """gamma = cos(pi t / 2), sigma = sin(pi t / 2)."""
  return Schedule("cosine", lambda t: -2.0 * _log_tan_half_pi(t), t_min, t_max)


@register("linear")
def linear(beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-4,
           t_max: float = 1.0) -> Schedule:
  """DDPM's linear betas in the continuous limit: alpha_bar = exp(-int_0^t beta)."""
  def raw_log_snr(t):
    integral = beta_min * t + 0.5 * (beta_max - beta_min) * t**2
    return -jnp.log(jnp.expm1(integral))  # log(alpha_bar / (1 - alpha_bar))
  return Schedule("linear", raw_log_snr, t_min, t_max)


@register("sqrt")
def sqrt(s: float = 1e-4, t_min: float = 0.0, t_max: float = 1.0 - 2e-4) -> Schedule:
  """Diffusion-LM: alpha_bar = 1 - sqrt(t + s); t_max keeps alpha_bar > 0."""
  def raw_log_snr(t):
    root = jnp.sqrt(t + s)
    return jnp.log1p(-root) - jnp.log(root)
  return Schedule("sqrt", raw_log_snr, t_min, t_max)


@register("tan_d")
def tan_d(d: float = 9.0, t_min: float = 1e-4, t_max: float = 1.0 - 1e-4) -> Schedule:
  """TEncDM: gamma = 1 / sqrt(1 + d^2 tan^2(pi t / 2)), i.e. SNR = 1 / (d tan(pi t / 2))^2."""
  return Schedule("tan_d", lambda t: -2.0 * (math.log(d) + _log_tan_half_pi(t)), t_min, t_max)


@register("ve")
def ve(sigma_min: float = 0.01, sigma_max: float = 100.0, t_min: float = 0.0,
       t_max: float = 1.0) -> Schedule:
  """Variance exploding s(t) = sigma_min (sigma_max/sigma_min)^t, as gamma = 1/sqrt(1+s^2)."""
  log_min, log_max = math.log(sigma_min), math.log(sigma_max)
  return Schedule("ve", lambda t: -2.0 * (log_min + t * (log_max - log_min)), t_min, t_max)


# ---------------------------------------------------------------------------------------------
# Time warping (CDCD): a monotone piecewise-linear CDF over t, fitted to the loss.


WARP_FOLLOWS = ("loss", "slope")


@flax.struct.dataclass
class TimeWarp:
  """Piecewise-constant density over `num_bins` equal bins of [0, 1] (a piecewise-linear CDF).

  `bin_loss` is a running mean of the per-example loss in each bin. What the density follows:
  * "loss": proportional to the bin's loss (plus a floor): time goes where the loss is high, which
    for a loss that grows with noise is mostly the noisy end;
  * "slope": the CDF is the loss itself (made monotone by a running maximum and normalized), so the
    density is the loss's increase across the bin: time goes where the loss changes, where tokens
    are neither read off their own latent nor lost (CDCD, Dieleman et al. 2022: the prediction's
    entropy grows linearly in warped time).
  """
  bin_loss: Array  # [num_bins]
  bin_seen: Array  # [num_bins], whether a bin has received any loss yet

  @property
  def num_bins(self) -> int:
    return self.bin_loss.shape[0]

  def density(self, floor: float = 0.01, follow: str = "loss") -> Array:
    """Normalized bin probabilities, [num_bins]."""
    if follow not in WARP_FOLLOWS:
      raise ValueError(f"Unknown time-warp target {follow!r}; expected one of {WARP_FOLLOWS}.")
    seen_mean = jnp.sum(self.bin_loss * self.bin_seen) / jnp.maximum(jnp.sum(self.bin_seen), 1.0)
    loss = jnp.where(self.bin_seen > 0, self.bin_loss, seen_mean)
    loss = jnp.where(jnp.sum(self.bin_seen) > 0, loss, 1.0)
    loss = jnp.maximum(loss, 0.0)
    if follow == "slope":  # increments of the monotone CDF, from 0 at t = 0
      loss = jnp.diff(jax.lax.cummax(loss), prepend=0.0)
    probs = loss / jnp.maximum(jnp.sum(loss), 1e-12)
    probs = jnp.where(jnp.sum(loss) > 0, probs, 1.0 / self.num_bins)
    probs = (1.0 - floor) * probs + floor / self.num_bins
    return probs

  def cdf_knots(self, follow: str = "loss") -> Array:
    """CDF at the bin edges, [num_bins + 1], from 0 to 1."""
    return jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(self.density(follow=follow))])

  def inverse_cdf(self, u: Array, follow: str = "loss") -> tuple[Array, Array]:
    """Maps uniform `u` to warped times `t` and their importance weights `1 / p(t)`."""
    probs = self.density(follow=follow)
    knots = jnp.concatenate([jnp.zeros((1,)), jnp.cumsum(probs)])
    edges = jnp.linspace(0.0, 1.0, self.num_bins + 1)
    t = jnp.interp(u, knots, edges)
    bin_index = jnp.clip((t * self.num_bins).astype(jnp.int32), 0, self.num_bins - 1)
    weight = 1.0 / (probs[bin_index] * self.num_bins)
    return t, weight

  def update(self, t: Array, loss: Array, decay: float = 0.99) -> "TimeWarp":
    """Moves each bin's running loss toward the mean loss of the examples that fell in it."""
    bin_index = jnp.clip((t * self.num_bins).astype(jnp.int32), 0, self.num_bins - 1)
    sums = jnp.zeros_like(self.bin_loss).at[bin_index].add(loss)
    counts = jnp.zeros_like(self.bin_loss).at[bin_index].add(1.0)
    batch_mean = sums / jnp.maximum(counts, 1.0)
    hit = counts > 0
    first = hit & (self.bin_seen == 0)
    blended = decay * self.bin_loss + (1.0 - decay) * batch_mean
    new_loss = jnp.where(first, batch_mean, jnp.where(hit, blended, self.bin_loss))
    return TimeWarp(bin_loss=new_loss, bin_seen=jnp.maximum(self.bin_seen, hit.astype(jnp.float32)))


def init_time_warp(num_bins: int = 100) -> TimeWarp:
  return TimeWarp(bin_loss=jnp.ones((num_bins,), jnp.float32),
                  bin_seen=jnp.zeros((num_bins,), jnp.float32))


def low_discrepancy_uniform(u0: Array, index: Array, count: int) -> Array:
  """Stratified uniforms `(u0 + index / count) mod 1` (VDM): one random offset for the batch."""
  return jnp.mod(u0 + index.astype(jnp.float32) / count, 1.0)


def time_grid(schedule: Schedule, num_steps: int, warp: TimeWarp | None = None,
              follow: str = "loss") -> Array:
  """Decreasing sampling times `[num_steps + 1]` from t_max to t_min.

  Uniform in t, or uniform in the warped CDF (`follow` as in `TimeWarp.density`) so steps
  concentrate where training spent its time.
  """
  u = jnp.linspace(1.0, 0.0, num_steps + 1)
  if warp is not None:
    u = warp.inverse_cdf(u, follow)[0]
  return schedule.t_min + u * (schedule.t_max - schedule.t_min)
