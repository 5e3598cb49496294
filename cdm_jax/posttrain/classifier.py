"""Classifiers of noisy latents p(label | x_t, t) for classifier guidance (`core.guidance`), trained
against a frozen diffusion model's embeddings (or its denoiser's estimates)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cdm_jax.core import diffusion, schedules as schedules_lib
from cdm_jax.models import ModelConfig, builders
from cdm_jax.models.transformer import TransformerDenoiser
from cdm_jax.training import fit


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
  cfg = ModelConfig(vocab_size=diffusion_config.vocab_size, seq_len=diffusion_config.latent_length,
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
  length, dim = model.config.latent_length, model.config.embed_dim  # the encoder's m latents
  init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
  cls_params = classifier.init(init_key, jnp.zeros((1, length, dim)), jnp.zeros((1,)))
  tx = builders.adamw_cosine(peak_learning_rate=config.learning_rate,
                             warmup_steps=max(1, config.steps // 10), total_steps=config.steps,
                             grad_clip_norm=0.0, weight_decay=1e-4)

  def loss_fn(cls_params, frozen, batch, key):
    batch_tokens, batch_labels = batch
    t_key, noise_key = jax.random.split(key)
    x0 = model.apply(frozen, batch_tokens, method="embed")
    t = jax.random.uniform(t_key, (x0.shape[0],))
    x_t = diffusion.q_sample(x0, t, jax.random.normal(noise_key, x0.shape), schedule)
    if estimate_fn is not None:
      x_t, t = jax.lax.stop_gradient(estimate_fn(x_t, t)), jnp.zeros_like(t)
    logits = classifier.apply(cls_params, x_t, schedule.log_snr(t))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels)), {}

  rng = np.random.default_rng(config.seed)

  def next_batch(unused_step):
    rows = rng.integers(0, len(tokens), config.batch_size)
    return tokens[rows], labels[rows]

  cls_params, fitted = fit.fit(loss_fn, cls_params, tx, next_batch, num_steps=config.steps,
                               key=data_key, frozen=params, desc="noisy classifier")
  losses = [h["loss"] for h in fitted["history"] if h["step"] % 100 == 0]
  return classifier, cls_params, {"steps": config.steps, "losses_every_100": losses}


def label_log_prob(classifier, cls_params, schedule: schedules_lib.Schedule, label: int):
  """`log_prob_fn(x_t, t)` -> [batch] log p(label | x_t) for `classifier_guided`."""
  def log_prob(x_t, t):
    logits = classifier.apply(cls_params, x_t, schedule.log_snr(t))
    return jax.nn.log_softmax(logits, axis=-1)[:, label]
  return log_prob
