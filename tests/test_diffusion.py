import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.core import diffusion
from cdm_jax.core import schedules
from cdm_jax.core import vocab_ops
from cdm_jax.models import DenoiserOutput, DiffusionLM, ModelConfig


def test_q_sample_moments():
  s = schedules.get_schedule("cosine")
  x0 = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  t = jnp.array([0.1, 0.5, 0.9])
  draws = 20000
  noise = jax.random.normal(jax.random.PRNGKey(1), (draws, 3, 4, 5))
  x_t = jax.vmap(lambda n: diffusion.q_sample(x0, t, n, s))(noise)
  gamma = np.cos(np.pi * np.asarray(t, np.float64) / 2)[:, None, None]
  sigma = np.sin(np.pi * np.asarray(t, np.float64) / 2)[:, None, None]
  stderr = sigma / np.sqrt(draws)
  assert np.all(np.abs(np.mean(x_t, 0) - gamma * np.asarray(x0)) < 5 * stderr)
  np.testing.assert_allclose(np.var(np.asarray(x_t, np.float64), 0), np.broadcast_to(sigma**2, x0.shape),
                             rtol=0.05)


class OracleModel:
  """Duck-typed DiffusionLM whose denoiser returns params["x0_hat"] (the truth, or zeros; zeros
  when absent), appending its (x_t, log_snr) inputs to `seen` when given."""

  def __init__(self, config, seen=None):
    self.config = config
    self.seen = seen

  def apply(self, params, *args, method, **kwargs):
    table = params["table"]
    if method == "embed":
      return table[args[0]]
    if method == "readout":
      return jnp.einsum("...d,vd->...v", args[0], table)
    if method == "readout_weights":
      return table, None
    if method == "denoise":
      if self.seen is not None:
        self.seen.append(args[:2])
      x0_hat = params.get("x0_hat", jnp.zeros_like(args[0]))
      return DenoiserOutput(x0_hat=x0_hat, raw=x0_hat, logits=None)
    raise ValueError(method)


def test_likelihood_bound_oracle_far_below_zero_predictor():
  config = ModelConfig(vocab_size=20, seq_len=6, embed_dim=8, self_conditioning=False)
  table = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (20, 8))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (16, 6), 0, 20)
  s = schedules.get_schedule("cosine")
  t = jax.random.uniform(jax.random.PRNGKey(2), (16,))
  noise = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 6, 8))
  model = OracleModel(config)
  oracle = diffusion.likelihood_bound(model, {"table": table, "x0_hat": table[tokens]}, tokens, t=t,
                                      noise=noise, schedule=s)
  zero = diffusion.likelihood_bound(model, {"table": table, "x0_hat": jnp.zeros((16, 6, 8))}, tokens,
                                    t=t, noise=noise, schedule=s)
  assert float(oracle["diffusion"]) == 0.0
  per_pos = lambda b: float(b["total"] / b["positions"])
  assert per_pos(oracle) < 0.1 * per_pos(zero)
  # The prior term matches the closed-form Gaussian KL computed in float64.
  x0 = np.asarray(table[tokens], np.float64)
  g1 = np.cos(np.pi / 2 * s.t_max)
  v1 = 1 - g1**2
  kl = 0.5 * np.sum(g1**2 * x0**2 + v1 - 1 - np.log(v1))
  np.testing.assert_allclose(float(oracle["prior"]), kl, rtol=1e-3)


def tiny_model(**overrides):
  config = ModelConfig(vocab_size=30, seq_len=8, embed_dim=8, width=32, num_layers=2, num_heads=2,
                       mlp_dim=64, **overrides)
  model = DiffusionLM(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,)))
  return model, params


class FixedOutputModel(OracleModel):
  """Duck-typed DiffusionLM whose network output is params["raw"] whatever its input."""

  def apply(self, params, *args, method, **kwargs):
    if method != "denoise":
      return super().apply(params, *args, method=method, **kwargs)
    raw = params["raw"]
    logits = raw if self.config.output == "logits" else None
    return DenoiserOutput(x0_hat=params["x0_hat"], raw=raw, logits=logits)


def np_cross_entropy(logits, tokens):
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  return log_z - np.take_along_axis(logits, tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("output", ["x0", "eps", "v", "logits"])
def test_training_losses_match_numpy(output):
  """Every term of the training loss against float64 NumPy: the MSE target of each
  parameterization (x0, eps = noise, v = gamma noise - sigma x0) or the CE on logits, the rounding
  term at t_min, the anchor term, and the padding mask's counts."""
  vocab, batch, length, dim = 30, 4, 8, 6
  config = ModelConfig(vocab_size=vocab, seq_len=length, embed_dim=dim, output=output)
  rng = np.random.default_rng(0)
  table = rng.normal(size=(vocab, dim))
  tokens = rng.integers(0, vocab, size=(batch, length))
  mask = np.arange(length)[None, :] < np.array([[8], [5], [3], [1]])
  t = np.array([0.1, 0.3, 0.6, 0.9])
  noise = rng.normal(size=(2, batch, length, dim))
  raw = rng.normal(size=(batch, length, vocab if output == "logits" else dim))
  x0_hat = rng.normal(size=(batch, length, dim))
  params = {k: jnp.asarray(v, jnp.float32) for k, v in
            {"table": table, "raw": raw, "x0_hat": x0_hat}.items()}
  sched = schedules.get_schedule("cosine")

  x0 = table[tokens]
  gamma, sigma = np.cos(np.pi * t / 2)[:, None, None], np.sin(np.pi * t / 2)[:, None, None]
  if output == "logits":
    per_token = np_cross_entropy(raw, tokens)
  else:
    target = {"x0": x0, "eps": noise[0], "v": gamma * noise[0] - sigma * x0}[output]
    per_token = np.mean((raw - target) ** 2, axis=-1)
  g0 = np.cos(np.pi * sched.t_min / 2)
  z0 = (g0 * x0 + np.sin(np.pi * sched.t_min / 2) * noise[1]) / g0
  rounding = np_cross_entropy(z0 @ table.T, tokens)
  anchor = np_cross_entropy(x0_hat @ table.T, tokens)

  for mask_padding in (True, False):
    weights = mask.astype(np.float64) if mask_padding else np.ones_like(mask, np.float64)
    cfg = diffusion.LossConfig(mask_padding=mask_padding, rounding_weight=0.7, anchor_weight=0.5)
    inputs = diffusion.LossInputs(tokens=jnp.asarray(tokens), mask=jnp.asarray(mask),
                                  t=jnp.asarray(t, jnp.float32), weight=jnp.ones(batch),
                                  noise=jnp.asarray(noise, jnp.float32), self_cond=jnp.array(False))
    loss, (metrics, per_example) = diffusion.training_losses(
        FixedOutputModel(config), params, inputs, sched, cfg, train=False)
    want = {"diffusion_loss": np.sum(per_token * weights), "rounding_loss": np.sum(rounding * weights),
            "anchor_loss": np.sum(anchor * weights), "tokens": weights.sum()}
    for key, value in want.items():
      np.testing.assert_allclose(float(metrics[key]), value, rtol=2e-4, err_msg=key)
    total = want["diffusion_loss"] + 0.7 * want["rounding_loss"] + 0.5 * want["anchor_loss"]
    np.testing.assert_allclose(float(loss), total, rtol=2e-4)
    np.testing.assert_allclose(per_example, np.sum(per_token * weights, -1) /
                               np.maximum(weights.sum(-1), 1), rtol=2e-4)


@pytest.mark.slow
def test_ce_with_normalized_embeddings_keeps_norms_fixed():
  import optax
  model, params = tiny_model(output="logits", normalize_embeddings=True)
  s = schedules.get_schedule("cosine")
  tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 8), 0, 30)
  tx = optax.adam(3e-2)
  opt_state = tx.init(params)
  cfg = diffusion.LossConfig(rounding_weight=0.0)

  @jax.jit
  def step(params, opt_state, key):
    k1, k2 = jax.random.split(key)
    t = jax.random.uniform(k1, (8,))
    noise = jax.random.normal(k2, (2, 8, 8, 8))
    inputs = diffusion.LossInputs(tokens=tokens, mask=tokens >= 0, t=t, weight=jnp.ones(8), noise=noise,
                                  self_cond=jnp.array(False))
    grad = jax.grad(lambda p: diffusion.training_losses(model, p, inputs, s, cfg)[0])(params)
    updates, opt_state = tx.update(grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  raw_before = np.asarray(params["params"]["embedder"]["table"])
  for i in range(30):
    params, opt_state = step(params, opt_state, jax.random.PRNGKey(i))
  raw_after = np.asarray(params["params"]["embedder"]["table"])
  assert np.max(np.abs(raw_after - raw_before)) > 1e-2  # the table did train
  norms = np.linalg.norm(np.asarray(model.apply(params, method="embeddings")), axis=-1)
  np.testing.assert_allclose(norms, np.sqrt(8.0), rtol=1e-5)


@pytest.mark.parametrize("dtype,time_conditioning,scan_layers", [("float32", "add", True),
                                                                  ("bfloat16", "adaln", False)])
def test_denoiser_variants_and_condition_mask(dtype, time_conditioning, scan_layers):
  model, params = tiny_model(dtype=dtype, time_conditioning=time_conditioning, scan_layers=scan_layers,
                             conditioning=True)
  x_t = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8))
  cond = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8))
  cond_mask = jnp.arange(8)[None, :].repeat(2, 0) < 3  # a known prefix of 3 positions
  out = model.apply(params, x_t, jnp.array([0.0, 2.0]), cond=cond, cond_mask=cond_mask,
                    method="denoise")
  assert out.x0_hat.dtype == jnp.float32 and np.all(np.isfinite(out.x0_hat))
  np.testing.assert_array_equal(out.x0_hat[:, :3], cond[:, :3])  # the prefix is kept as given
  assert not np.allclose(out.x0_hat[:, 3:], cond[:, 3:])


def test_embedding_statistics_against_numpy_and_subsampling():
  from cdm_jax.core import embedding_stats
  table = jax.random.normal(jax.random.PRNGKey(0), (50, 6))
  s = schedules.get_schedule("cosine")
  stats = embedding_stats.embedding_statistics(table, s, jax.random.PRNGKey(1))
  t = np.asarray(table, np.float64)
  d = np.linalg.norm(t[:, None] - t[None], axis=-1)
  np.testing.assert_allclose(float(stats["embed_mean_pairwise_distance"]), d.sum() / (50 * 49), rtol=1e-4)
  np.testing.assert_allclose(float(stats["embed_mean_norm"]), np.linalg.norm(t, axis=-1).mean(), rtol=1e-5)
  assert float(stats["embed_decode_acc_clean"]) == 1.0
  sub = embedding_stats.embedding_statistics(table, s, jax.random.PRNGKey(1), max_rows=30)
  assert abs(float(sub["embed_mean_pairwise_distance"]) / (d.sum() / (50 * 49)) - 1) < 0.1
  assert float(sub["embed_decode_acc_clean"]) == 1.0


@pytest.mark.parametrize("rows", [5, 300])
def test_readout_cross_entropy_and_gradients_match_float64(rows):
  """The row-blocked read-out CE (own backward) and its gradients against float64 NumPy."""
  rng = np.random.default_rng(rows)
  x, table, bias = rng.normal(size=(rows, 2, 6)), rng.normal(size=(23, 6)), rng.normal(size=23)
  tokens = rng.integers(0, 23, size=(rows, 2))
  logits = x @ table.T + bias
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  want = log_z - np.take_along_axis(logits, tokens[..., None], -1)[..., 0]
  j = lambda a: jnp.asarray(a, jnp.float32)
  got = vocab_ops.readout_cross_entropy(j(x), j(table), j(bias), jnp.asarray(tokens), block=64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # d/dx sum CE = (softmax - onehot) E; d/dE = (softmax - onehot)^T x.
  probs = np.exp(logits - log_z[..., None])
  delta = probs - np.eye(23)[tokens]
  gx, gt, gb = jax.grad(lambda x, t, b: jnp.sum(vocab_ops.readout_cross_entropy(
      x, t, b, jnp.asarray(tokens), block=64)), (0, 1, 2))(j(x), j(table), j(bias))
  np.testing.assert_allclose(gx, delta @ table, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gt, np.einsum("nlv,nld->vd", delta, x), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gb, delta.sum((0, 1)), rtol=1e-4, atol=1e-4)
  # A cotangent other than ones (a weight per position) scales each position's gradient.
  w = rng.uniform(0.5, 2.0, size=tokens.shape)
  gx_w = jax.grad(lambda x: jnp.sum(j(w) * vocab_ops.readout_cross_entropy(
      x, j(table), j(bias), jnp.asarray(tokens), block=64)))(j(x))
  np.testing.assert_allclose(gx_w, (w[..., None] * delta) @ table, rtol=1e-4, atol=1e-4)


def test_readout_cross_entropy_bfloat16_operands():
  """operand_dtype=bfloat16: the logits are a bf16-operand dot (float32 result) and the CE and its
  gradients stay within bf16 rounding of float32; the default lowers no bf16 dot."""
  rng = np.random.default_rng(0)
  x, table = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((300, 16), (50, 16)))
  bias, tokens = jnp.asarray(rng.normal(size=50), jnp.float32), jnp.asarray(rng.integers(0, 50, 300))
  def total(dtype):
    return lambda x, t: jnp.sum(vocab_ops.readout_cross_entropy(x, t, bias, tokens, block=64,
                                                                operand_dtype=dtype))
  assert "xbf16>) -> tensor<" in jax.jit(total(jnp.bfloat16)).lower(x, table).as_text()
  assert "bf16" not in jax.jit(total(None)).lower(x, table).as_text()
  want, got = total(None)(x, table), total(jnp.bfloat16)(x, table)
  assert abs(float(got) / float(want) - 1) < 1e-2 and float(got) != float(want)
  for g32, g16 in zip(jax.grad(total(None), (0, 1))(x, table), jax.grad(total(jnp.bfloat16), (0, 1))(x, table)):
    assert np.linalg.norm(g16 - g32) / np.linalg.norm(g32) < 3e-2
