import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.models import transformer
from cdm_jax.models.config import ModelConfig


def np_layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def np_gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_block(p, x, cond, bias, heads):
  """One adaLN pre-LN block in float64 NumPy, heads written out one by one."""
  dense = lambda h, q: h @ q["kernel"] + q["bias"]
  batch, length, width = x.shape
  hd = width // heads
  shift1, scale1, shift2, scale2 = np.split(dense(cond, p["adaln"])[:, None, :], 4, axis=-1)
  h = np_layer_norm(x, p["ln_attn"]) * (1 + scale1) + shift1
  q, k, v = np.split(dense(h, p["qkv"]), 3, axis=-1)
  out = np.zeros_like(x)
  for i in range(heads):
    cols = slice(i * hd, (i + 1) * hd)
    logits = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / np.sqrt(hd) + bias[:, 0]
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out[..., cols] = w @ v[..., cols]
  x = x + dense(out, p["attn_out"])
  h = np_layer_norm(x, p["ln_mlp"]) * (1 + scale2) + shift2
  return x + dense(np_gelu(dense(h, p["mlp_in"])), p["mlp_out"])


@pytest.mark.parametrize("causal", [False, True])
def test_block_matches_float64_numpy(causal):
  cfg = ModelConfig(vocab_size=11, seq_len=6, embed_dim=4, width=16, num_heads=4, mlp_dim=32)
  block = transformer.Block(cfg)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 16))
  cond = jax.random.normal(jax.random.PRNGKey(1), (3, 16))
  mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2, [True] + [False] * 5])
  bias = transformer.attention_bias(mask, 6, causal)
  params = block.init(jax.random.PRNGKey(2), x, cond, bias, True)
  # The adaLN projection starts at zero; give it weights so the modulation is exercised too.
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: jax.random.normal(jax.random.PRNGKey(3), v.shape) * 0.1
      if "adaln" in jax.tree_util.keystr(path) else v, params)
  out, _ = block.apply(params, x, cond, bias, True)
  f64 = jax.tree.map(lambda v: np.asarray(v, np.float64), params["params"])
  want = np_block(f64, np.asarray(x, np.float64), np.asarray(cond, np.float64),
                  np.asarray(bias, np.float64), cfg.num_heads)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
