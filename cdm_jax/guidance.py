"""Classifier guidance (Diffusion-LM's plug-and-play control): a classifier of noisy latents
p(label | x_t, t), trained against a frozen diffusion model's embeddings, steers sampling.

With x_t = gamma x0 + sigma eps, Tweedie's formula gives E[x0 | x_t] = (x_t + sigma^2 grad log
p(x_t)) / gamma, and Bayes' rule grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t). So the
conditional estimate is the unconditional one shifted by (sigma^2 / gamma) grad_x log p(y | x_t);
`scale` multiplies the shift (1: the exact conditional when both parts are exact; larger trades
fluency for control). Every sampler then follows it unchanged.
"""

import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cdm_jax import diffusion, schedules as schedules_lib
from cdm_jax.models import ModelConfig
from cdm_jax.models.transformer import TransformerDenoiser
from cdm_jax.parameterization import expand_like

log = logging.getLogger(__name__)


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


class NoisyClassifier(nn.Module):
  """Label logits [batch, num_labels] of noisy latents x_t [batch, length, dim] at log-SNR
  [batch]: a small bidirectional transformer, mean-pooled over positions."""
  config: ModelConfig
  num_labels: int

  @nn.compact
  def __call__(self, x_t, log_snr):
    per_position = TransformerDenoiser(self.config, out_dim=self.num_labels, name="encoder")(
        x_t, log_snr)
    return jnp.mean(per_position, axis=1)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  width: int = 128
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  steps: int = 600
  batch_size: int = 64
  learning_rate: float = 1e-3
  seed: int = 0


def classifier_model(diffusion_config: ModelConfig, num_labels: int,
                     config: ClassifierConfig) -> NoisyClassifier:
  cfg = ModelConfig(vocab_size=diffusion_config.vocab_size, seq_len=diffusion_config.seq_len,
                    embed_dim=diffusion_config.embed_dim, width=config.width,
                    num_layers=config.num_layers, num_heads=config.num_heads,
                    mlp_dim=config.mlp_dim, self_conditioning=False)
  return NoisyClassifier(cfg, num_labels)


def train_noisy_classifier(model, params, schedule: schedules_lib.Schedule, tokens: np.ndarray,
                           labels: np.ndarray, *, num_labels: int,
                           config: ClassifierConfig = ClassifierConfig(), estimate_fn=None):
  """Trains p(label | x_t, t) on x_t = q_sample(embed(tokens), t, noise), t ~ U[0, 1], with the
  diffusion model (`model`, `params`) frozen. Returns (classifier, its params, info).

  `estimate_fn` (x_t, t) -> x0_hat, when given: the classifier is trained on the denoiser's
  estimates instead, read at t = 0 (a classifier of estimates, for guiding on x0_hat as
  `readout_guided` does, where it then sees what it was trained on)."""
  classifier = classifier_model(model.config, num_labels, config)
  length, dim = tokens.shape[1], model.config.embed_dim
  init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
  cls_params = classifier.init(init_key, jnp.zeros((1, length, dim)), jnp.zeros((1,)))
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, max(1, config.steps // 10), config.steps, 0.1 * config.learning_rate))
  opt_state = tx.init(cls_params)

  @jax.jit
  def step(cls_params, opt_state, batch_tokens, batch_labels, key):
    t_key, noise_key = jax.random.split(key)
    x0 = model.apply(params, batch_tokens, method="embed")
    t = jax.random.uniform(t_key, (x0.shape[0],))
    x_t = diffusion.q_sample(x0, t, jax.random.normal(noise_key, x0.shape), schedule)
    if estimate_fn is not None:
      x_t, t = jax.lax.stop_gradient(estimate_fn(x_t, t)), jnp.zeros_like(t)

    def loss_fn(p):
      logits = classifier.apply(p, x_t, schedule.log_snr(t))
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels))
    loss, grads = jax.value_and_grad(loss_fn)(cls_params)
    updates, opt_state = tx.update(grads, opt_state, cls_params)
    return optax.apply_updates(cls_params, updates), opt_state, loss

  rng = np.random.default_rng(config.seed)
  losses = []
  for i in range(config.steps):
    rows = rng.integers(0, len(tokens), config.batch_size)
    cls_params, opt_state, loss = step(cls_params, opt_state, tokens[rows], labels[rows],
                                       jax.random.fold_in(data_key, i))
    if (i + 1) % 100 == 0:
      losses.append(float(loss))
      log.info("noisy classifier step %d: loss %.4f", i + 1, losses[-1])
  return classifier, cls_params, {"steps": config.steps, "losses_every_100": losses}


def label_log_prob(classifier, cls_params, schedule: schedules_lib.Schedule, label: int):
  """`log_prob_fn(x_t, t)` -> [batch] log p(label | x_t) for `classifier_guided`."""
  def log_prob(x_t, t):
    logits = classifier.apply(cls_params, x_t, schedule.log_snr(t))
    return jax.nn.log_softmax(logits, axis=-1)[:, label]
  return log_prob
