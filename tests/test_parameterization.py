"""The parameterization registry against float64 NumPy: each MSE target maps back to x0, and the
output prior is the exact context-free posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.core import parameterization
from cdm_jax.models import ModelConfig


@pytest.mark.parametrize("name", ["x0", "eps", "v"])
def test_the_target_of_the_truth_maps_back_to_x0(name):
  rng = np.random.default_rng(0)
  x0, eps = rng.normal(size=(2, 3, 4, 5))
  log_snr = np.array([-5.0, 0.3, 6.0])[:, None, None]
  gamma, sigma = np.sqrt(1 / (1 + np.exp(-log_snr))), np.sqrt(1 / (1 + np.exp(log_snr)))
  x_t = gamma * x0 + sigma * eps
  param = parameterization.get(name)
  want_target = {"x0": x0, "eps": eps, "v": gamma * eps - sigma * x0}[name]
  np.testing.assert_allclose(param.target(x0, eps, gamma, sigma), want_target, rtol=1e-12)
  np.testing.assert_allclose(param.to_x0(want_target, x_t, gamma, sigma), x0, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(parameterization.eps_from_x0(x_t, x0, gamma[:, 0, 0], sigma[:, 0, 0]),
                             eps, rtol=1e-9, atol=1e-9)


def test_output_prior_alone_is_the_exact_posterior_over_tokens():
  """softmax((gamma / sigma^2) x_t . E^T) = p(w | x_t) for x_t = gamma e_w + sigma eps, a uniform
  prior over tokens and rows of E of equal norm, at every noise level."""
  rng = np.random.default_rng(1)
  table = rng.normal(size=(50, 8))
  table = table / np.linalg.norm(table, axis=-1, keepdims=True) * np.sqrt(8)
  tokens = rng.integers(0, 50, size=(4, 6))
  log_snr = np.array([-6.0, -1.0, 1.5, 4.0])
  gamma = np.sqrt(1 / (1 + np.exp(-log_snr)))[:, None, None]
  sigma = np.sqrt(1 / (1 + np.exp(log_snr)))[:, None, None]
  x_t = gamma * table[tokens] + sigma * rng.normal(size=(4, 6, 8))
  sq_dist = np.sum((x_t[..., None, :] - gamma[..., None] * table) ** 2, axis=-1)
  log_post = -sq_dist / (2 * sigma**2)
  post = np.exp(log_post - log_post.max(-1, keepdims=True))
  post /= post.sum(-1, keepdims=True)
  shift = parameterization.prior_shift(jnp.asarray(x_t, jnp.float32), jnp.asarray(log_snr, jnp.float32))
  got = jax.nn.softmax(shift @ jnp.asarray(table, jnp.float32).T, axis=-1)
  np.testing.assert_allclose(got, post, atol=2e-4)
  assert 0.05 < float(np.mean(np.max(post, -1))) < 0.99  # the levels span ambiguous and clear


def test_output_prior_needs_normalized_embeddings():
  with pytest.raises(ValueError, match="normalize_embeddings"):
    ModelConfig(output="logits_prior")
  with pytest.raises(ValueError, match="Unknown model.output"):
    ModelConfig(output="score")
  ModelConfig(output="logits_prior", normalize_embeddings=True)
