"""What the denoiser's output means (x0, eps, v or logits): one registry, used by the model (output
-> x0_hat), the loss (its regression target) and the samplers (x0_hat -> eps_hat).

With `x_t = gamma x0 + sigma eps` and `gamma^2 + sigma^2 = 1`:
  x0:     the network predicts x0 itself;
  eps:    it predicts eps, and x0_hat = (x_t - sigma eps_hat) / gamma;
  v:      it predicts v = gamma eps - sigma x0 (Salimans & Ho 2022), and x0_hat = gamma x_t - sigma v;
  logits: it predicts read-out logits over the vocabulary, trained with cross-entropy; x0_hat is
          the expected embedding under their softmax (CDCD's score interpolation, in the model).
  logits_prior: logits as above plus the context-free posterior's, (gamma / sigma^2) x_t . E^T
          (an output prior as in Plaid and LangFlow): with embeddings of equal norm, softmax of
          that term alone is exactly p(w | x_t) for one position under a uniform token prior, so
          the network only learns what the context adds. Needs normalized embeddings.
"""

import dataclasses
from typing import Callable

import jax

from cdm_jax.runtime import registry

Array = jax.Array


def expand_like(values: Array, like: Array) -> Array:
  """Per-example (or per-position) values [batch(, m)] broadcast against `like` [batch, m, ...]."""
  return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


@dataclasses.dataclass(frozen=True)
class Parameterization:
  name: str
  # (raw output, x_t, gamma, sigma) -> x0_hat, with gamma and sigma broadcast to x_t; None: logits
  to_x0: Callable[[Array, Array, Array, Array], Array] | None
  # (x0, eps, gamma, sigma) -> the MSE target of the raw output; None: cross-entropy on the tokens
  target: Callable[[Array, Array, Array, Array], Array] | None
  output_prior: bool = False  # logits: add the context-free posterior's logits (see above)

  @property
  def predicts_logits(self) -> bool:
    return self.to_x0 is None


PARAMETERIZATIONS: registry.Registry[Parameterization] = registry.Registry("model.output")


def _add(parameterization: Parameterization):
  PARAMETERIZATIONS.register(parameterization.name)(parameterization)


_add(Parameterization("x0", to_x0=lambda raw, x_t, g, s: raw, target=lambda x0, eps, g, s: x0))
_add(Parameterization("eps", to_x0=lambda raw, x_t, g, s: (x_t - s * raw) / g,
                      target=lambda x0, eps, g, s: eps))
_add(Parameterization("v", to_x0=lambda raw, x_t, g, s: g * x_t - s * raw,
                      target=lambda x0, eps, g, s: g * eps - s * x0))
_add(Parameterization("logits", to_x0=None, target=None))
_add(Parameterization("logits_prior", to_x0=None, target=None, output_prior=True))


def get(name: str) -> Parameterization:
  return PARAMETERIZATIONS.get(name)


def prior_shift(x_t: Array, log_snr: Array) -> Array:
  """(gamma / sigma^2) x_t [batch, length, dim]: the embedding-space form of the context-free
  posterior's logits, whose read-out against E gives (gamma / sigma^2) x_t . E^T."""
  log_snr = expand_like(log_snr, x_t)
  gamma, sigma_sq = jax.numpy.sqrt(jax.nn.sigmoid(log_snr)), jax.nn.sigmoid(-log_snr)
  return gamma / sigma_sq * x_t


def eps_from_x0(x_t: Array, x0_hat: Array, gamma: Array, sigma: Array) -> Array:
  """The noise implied by x0_hat at x_t; gamma, sigma [batch] or [batch, m]."""
  return (x_t - expand_like(gamma, x_t) * x0_hat) / expand_like(sigma, x_t)
