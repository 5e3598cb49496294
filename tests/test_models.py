import dataclasses

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


@pytest.mark.slow
def test_bfloat16_matmuls_track_float32_and_lower_to_bfloat16_dots():
  """model.matmul_dtype=bfloat16: same parameters; the Dense matmuls take bf16 operands (float32
  accumulation); outputs and gradients stay within bf16 rounding of the float32 block."""
  cfg32 = ModelConfig(vocab_size=11, seq_len=6, embed_dim=4, width=16, num_heads=4, mlp_dim=32)
  cfg16 = ModelConfig(**{**cfg32.__dict__, "matmul_dtype": "bfloat16"})
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 16))
  cond = jax.random.normal(jax.random.PRNGKey(1), (3, 16))
  params = transformer.Block(cfg32).init(jax.random.PRNGKey(2), x, cond, None, True)
  assert jax.tree.structure(params) == jax.tree.structure(
      transformer.Block(cfg16).init(jax.random.PRNGKey(2), x, cond, None, True))

  def loss(cfg):
    return lambda p, x: jnp.sum(jnp.square(transformer.Block(cfg).apply(p, x, cond, None, True)[0]))

  lowered = jax.jit(loss(cfg16)).lower(params, x).as_text()
  assert "xbf16>) -> tensor<" in lowered  # a dot_general with bf16 operands and f32 result
  assert "xbf16>" not in jax.jit(loss(cfg32)).lower(params, x).as_text()
  out32 = transformer.Block(cfg32).apply(params, x, cond, None, True)[0]
  out16 = transformer.Block(cfg16).apply(params, x, cond, None, True)[0]
  assert out16.dtype == jnp.float32
  err = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 0 < err < 2e-2, err
  g32, g16 = (jax.grad(loss(c))(params, x) for c in (cfg32, cfg16))
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    assert float(jnp.linalg.norm(a - b)) <= 3e-2 * float(jnp.linalg.norm(a)) + 1e-6


def test_model_config_rejects_unknown_matmul_dtype():
  with pytest.raises(ValueError, match="matmul_dtype"):
    ModelConfig(matmul_dtype="int4")


@pytest.mark.slow
def test_position_embedding_init_scale_is_configurable():
  # The denoiser's position table starts at pos_init_std; the AR judge's stays at 0.02.
  cfg = ModelConfig(vocab_size=16, seq_len=32, embed_dim=8, width=64, num_layers=1, num_heads=2,
                    mlp_dim=32, pos_init_std=1.0)
  denoiser = transformer.TransformerDenoiser(cfg, out_dim=8)
  params = denoiser.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 8)), jnp.zeros((1,)))
  assert abs(float(np.std(params["params"]["pos_embedding"])) - 1.0) < 0.05
  default = transformer.TransformerDenoiser(ModelConfig(**{**cfg.__dict__, "pos_init_std": 0.02}), 8)
  params = default.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 8)), jnp.zeros((1,)))
  assert abs(float(np.std(params["params"]["pos_embedding"])) - 0.02) < 0.002


def np_sinusoidal(values, dim):
  half = dim // 2
  freqs = np.exp(-np.log(10_000.0) * np.arange(half) / half)
  angles = 5.0 * values[..., None] * freqs
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def np_diffusion_lm(p, tokens, log_snr, cfg):
  """DiffusionLM.__call__ in float64: embed (normalized or not), denoise with x0 as the
  self-conditioning input, the time embedding through adaLN, the parameterization, the read-out."""
  dense = lambda h, q: h @ q["kernel"] + q["bias"]
  silu = lambda v: v / (1 + np.exp(-v))
  table = p["embedder"]["table"]
  if cfg.normalize_embeddings:
    table = table / np.linalg.norm(table, axis=-1, keepdims=True) * cfg.embed_scale * np.sqrt(cfg.embed_dim)
  x0 = table[tokens]
  d = p["denoiser"]
  h = dense(np.concatenate([x0, x0], -1), d["in_proj"]) + d["pos_embedding"][None, :tokens.shape[1]]
  t_emb = dense(silu(dense(np_sinusoidal(log_snr, cfg.width), d["time_mlp_in"])), d["time_mlp_out"])
  bias = np.zeros((1, 1, tokens.shape[1], tokens.shape[1]))
  for i in range(cfg.num_layers):
    h = np_block(d["stack"][f"layer_{i}"], h, silu(t_emb), bias, cfg.num_heads)
  raw = dense(np_layer_norm(h, d["stack"]["ln_final"]), d["out_proj"])
  gamma = np.sqrt(1 / (1 + np.exp(-log_snr)))[:, None, None]
  sigma = np.sqrt(1 / (1 + np.exp(log_snr)))[:, None, None]
  readout = lambda x: x @ table.T + p["embedder"]["readout_bias"]
  if cfg.output.startswith("logits"):
    if cfg.output == "logits_prior":  # x_t is x0 here; gamma / sigma^2 x_t . E^T
      raw = raw + gamma / sigma**2 * x0
    logits = readout(raw)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    x0_hat = (probs / probs.sum(-1, keepdims=True)) @ table
  else:
    x0_hat = {"x0": raw, "eps": (x0 - sigma * raw) / gamma, "v": gamma * x0 - sigma * raw}[cfg.output]
  return readout(x0_hat)


@pytest.mark.parametrize("output", ["x0", "eps", "v", "logits", "logits_prior"])
def test_diffusion_lm_matches_float64_numpy(output):
  from cdm_jax.models import DiffusionLM
  cfg = ModelConfig(vocab_size=13, seq_len=5, embed_dim=4, width=16, num_layers=2, num_heads=2,
                    mlp_dim=32, output=output, normalize_embeddings=output.startswith("logits"),
                    embed_scale=0.7)
  model = DiffusionLM(cfg)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 5), 0, 13)
  log_snr = jnp.array([-3.0, 0.5, 4.0])
  params = model.init(jax.random.PRNGKey(1), tokens, log_snr)
  # Random values everywhere (adaLN and biases start at zero and would hide their terms).
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves)])
  got = jax.jit(model.apply)(params, tokens, log_snr)
  f64 = jax.tree.map(lambda v: np.asarray(v, np.float64), params["params"])
  want = np_diffusion_lm(f64, np.asarray(tokens), np.asarray(log_snr, np.float64), cfg)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.slow
def test_remat_keeps_parameters_outputs_and_gradients():
  """model.remat recomputes activations in the backward pass: same parameter tree, same loss and
  gradients; the compiled gradient does the forward's matmuls again (more dots)."""
  base = ModelConfig(vocab_size=16, seq_len=6, embed_dim=4, width=16, num_layers=2, num_heads=2,
                     mlp_dim=32, scan_layers=True)  # as the large configs use it
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 16))
  cond = jax.random.normal(jax.random.PRNGKey(2), (2, 16))
  results, dots = [], []
  for remat in (False, True):
    stack = transformer.Stack(dataclasses.replace(base, remat=remat))
    params = stack.init(jax.random.PRNGKey(0), x, cond, None, True)
    loss = lambda p, s=stack: jnp.sum(jnp.sin(s.apply(p, x, cond, None, True)))
    results.append((params, *jax.value_and_grad(loss)(params)))
    dots.append(jax.jit(jax.grad(loss)).lower(params).as_text().count("dot_general"))
  (p0, l0, g0), (p1, l1, g1) = results
  assert jax.tree.structure(p0) == jax.tree.structure(p1)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)  # recomputed: rounding differs
  assert dots[1] > dots[0]
