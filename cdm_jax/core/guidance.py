"""Classifier guidance (Diffusion-LM's plug-and-play control): the gradient of a log-probability of
the latents (a noisy-latent classifier's, `posttrain.classifier`, or a read-out objective) steers
sampling.

With x_t = gamma x0 + sigma eps, Tweedie's formula gives E[x0 | x_t] = (x_t + sigma^2 grad log
p(x_t)) / gamma, and Bayes' rule grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t). So the
conditional estimate is the unconditional one shifted by (sigma^2 / gamma) grad_x log p(y | x_t);
`scale` multiplies the shift (1: the exact conditional when both parts are exact; larger trades
fluency for control). Every sampler then follows it unchanged.
"""

import jax
import jax.numpy as jnp

from cdm_jax.core import schedules as schedules_lib
from cdm_jax.core.parameterization import expand_like



def classifier_guided(denoise_fn, log_prob_fn, schedule: schedules_lib.Schedule, scale: float,
                      min_log_snr: float | None = None):
  """`denoise_fn` (x_t, t, x0_selfcond) -> x0_hat, shifted by scale (sigma^2 / gamma) grad_x
  log p(y | x_t); `log_prob_fn(x_t, t)` -> [batch] log-probabilities of each sample's label.

  `min_log_snr`: guide only where log-SNR >= it. At the noisiest times sigma^2 / gamma is in the
  thousands, and the small gradient a learned classifier still has there (an exact one's vanishes
  like gamma) throws x0_hat off the data; a window such as log-SNR >= -4 (sigma^2/gamma <= 7.4)
  avoids it.
  """
  def guided(x_t, t, x0_selfcond):
    x0_hat = denoise_fn(x_t, t, x0_selfcond)
    grad = jax.grad(lambda x: jnp.sum(log_prob_fn(x, t)))(x_t)
    return _shifted(x0_hat, grad, t, schedule, scale, min_log_snr)
  return guided


def _shifted(x0_hat, grad, t, schedule: schedules_lib.Schedule, scale: float, min_log_snr):
  """x0_hat + scale (sigma^2 / gamma) grad, only where log-SNR >= min_log_snr (when given)."""
  gamma, sigma = schedule.alpha_sigma(t)
  factor = scale * sigma**2 / gamma
  if min_log_snr is not None:
    factor = jnp.where(schedule.log_snr(t) >= min_log_snr, factor, 0.0)
  return x0_hat + expand_like(factor, x0_hat) * grad


def readout_guided(denoise_fn, objective_fn, schedule: schedules_lib.Schedule, scale: float,
                   min_log_snr: float | None = None):
  """Label-free guidance with the denoiser as its own classifier: x0_hat shifted by scale
  (sigma^2 / gamma) grad_x `objective_fn(x0_hat(x_t))`, where `objective_fn` maps the estimate
  [batch, length, dim] to a log-probability per sample [batch] (e.g. `real_token_log_prob` of the
  model's read-out). The gradient runs through the denoiser itself (one backward pass a step),
  with the self-conditioning input the sampler gives; `min_log_snr` as in `classifier_guided`."""
  def guided(x_t, t, x0_selfcond):
    def objective(x):
      x0_hat = denoise_fn(x, t, x0_selfcond)
      return jnp.sum(objective_fn(x0_hat)), x0_hat
    grad, x0_hat = jax.grad(objective, has_aux=True)(x_t)
    return _shifted(x0_hat, grad, t, schedule, scale, min_log_snr)
  return guided


def real_token_log_prob(readout_fn, gap_mask, special_ids):
  """`objective_fn` for `readout_guided` (length control): for each sample, the sum over its gap
  positions (`gap_mask` bool, [length] for every sample alike, as the sampler's device split
  needs, or [batch, length] outside it) of log P(not one of `special_ids`) under
  softmax(`readout_fn(x0_hat)`), the model's read-out of its estimate."""
  special_ids = jnp.asarray(special_ids)

  def log_prob(x0_hat):
    log_p = jax.nn.log_softmax(readout_fn(x0_hat).astype(jnp.float32), axis=-1)
    log_special = jax.nn.logsumexp(log_p[..., special_ids], axis=-1)
    # log(1 - p_special), stable for p_special near 0 or 1.
    log_real = jnp.log(-jnp.expm1(jnp.minimum(log_special, -1e-6)))
    return jnp.sum(jnp.where(gap_mask, log_real, 0.0), axis=-1)
  return log_prob
