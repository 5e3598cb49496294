"""Pre-LN transformer blocks: the bidirectional denoiser and the causal judge LM share them."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from cdm_jax.models.config import ModelConfig
from cdm_jax.models import partitioning
from cdm_jax.models.partitioning import logical

Array = jax.Array


def sinusoidal_features(values: Array, dim: int, max_period: float = 10_000.0) -> Array:
  """[...] -> [..., dim] sin/cos features of scalars (here log-SNR)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  # log-SNR spans about [-20, 20]; the factor spreads it over several periods of the fastest wave.
  angles = 5.0 * values.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_matmul(x: Array, kernel: Array, operand_dtype) -> Array:
  """x [rows, in] @ kernel [in, out] (both float32) on `operand_dtype` operands, accumulated in
  float32.

  Its own backward: d_x is the same kind of product (the cotangent, cast, contracted with the
  kernel's output axis: XLA:CPU runs that bf16 product on AMX as it is, whereas the float32
  cotangent of plain autodiff makes it a float32 product); d_kernel stays float32 (a bf16 product
  contracting over the rows ran slower than float32 here; benchmarks/NOTES.md).
  """
  return _low_precision_matmul_fwd(x, kernel, operand_dtype)[0]


def _low_precision_matmul_fwd(x, kernel, operand_dtype):
  x_low, kernel_low = x.astype(operand_dtype), kernel.astype(operand_dtype)
  out = jax.lax.dot_general(x_low, kernel_low, (((1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)
  return out, (x_low, kernel_low)


def _low_precision_matmul_bwd(operand_dtype, residuals, grad):
  x_low, kernel_low = residuals
  d_x = jax.lax.dot_general(grad.astype(operand_dtype), kernel_low, (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
  d_kernel = jax.lax.dot_general(x_low.astype(jnp.float32), grad.astype(jnp.float32),
                                 (((0,), (0,)), ((), ())))
  return d_x, d_kernel


_low_precision_matmul.defvjp(_low_precision_matmul_fwd, _low_precision_matmul_bwd)


def _cast_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, *,
                      operand_dtype):
  """nn.Dense's dot_general ([..., in] x [in, out]) on `operand_dtype` operands with float32
  accumulation, returned in lhs's dtype."""
  del precision, preferred_element_type  # float32 accumulation whatever the caller prefers
  if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2:
    raise ValueError(f"expected a Dense contraction, got {dimension_numbers} for {rhs.shape}.")
  out = _low_precision_matmul(lhs.reshape(-1, lhs.shape[-1]).astype(jnp.float32),
                              rhs.astype(jnp.float32), operand_dtype)
  return out.reshape(lhs.shape[:-1] + (rhs.shape[1],)).astype(lhs.dtype)


def dense(cfg: ModelConfig, features: int, name: str, axes: tuple[str, str],
          kernel_init=nn.initializers.lecun_normal()) -> nn.Dense:
  """nn.Dense in the compute dtype, its kernel [in, out] named by the logical `axes` (its bias by
  the second). With `model.matmul_dtype` different from `model.dtype`, its matmul takes operands of
  matmul_dtype (accumulating in float32): bfloat16 operands run on the bfloat16/AMX units of recent
  x86 CPUs (and on TPU/GPU). Same parameters, same names."""
  dot_general = None
  if cfg.matmul_dtype != cfg.dtype:
    dot_general = functools.partial(_cast_dot_general, operand_dtype=cfg.matmul_operand_dtype)
  return nn.Dense(features, dtype=cfg.compute_dtype, dot_general=dot_general, name=name,
                  kernel_init=logical(kernel_init, *axes),
                  bias_init=logical(nn.initializers.zeros, axes[1]))


def layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(dtype=cfg.compute_dtype, name=name,
                      scale_init=logical(nn.initializers.ones, "embed"),
                      bias_init=logical(nn.initializers.zeros, "embed"))


def rows(layer: nn.Dense, x: Array) -> Array:
  """Applies `layer` to x [..., in] as one [rows, in] matrix. The same function as calling it on
  x, but XLA:CPU then computes the kernel gradient as one plain matmul; contracting over
  [batch, length] instead costs transposed copies of the activations (benchmarks/NOTES.md)."""
  return layer(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1] + (layer.features,))


def attention_bias(mask: Array | None, length: int, causal: bool) -> Array | None:
  """Additive bias [batch or 1, 1, length, length] from a key mask [batch, length] and causality."""
  bias = None
  if mask is not None:
    bias = jnp.where(mask[:, None, None, :], 0.0, -1e9)
  if causal:
    tri = jnp.tril(jnp.ones((length, length), bool))
    causal_bias = jnp.where(tri, 0.0, -1e9)[None, None]
    bias = causal_bias if bias is None else bias + causal_bias
  return bias


class Block(nn.Module):
  """Pre-LN attention + MLP; with a conditioning vector, LayerNorms are modulated (adaLN)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, cond, bias, deterministic: bool, *, cache=None, position=None):
    """x [batch, length, width] -> (x, None); with `cache` (keys, values [batch, heads, max_len,
    head_dim]) x is one position [batch, 1, width] at `position`, attending to the cached ones
    before it: -> (x, the cache with this position's keys and values written in)."""
    cfg = self.config
    dtype = cfg.compute_dtype
    batch, length, width = x.shape
    head_dim = width // cfg.num_heads
    if cond is not None:  # adaLN: zero-initialised so every block starts as a plain pre-LN block
      mod = dense(cfg, 4 * width, "adaln", ("embed", "mlp"), nn.initializers.zeros)(cond)
      shift1, scale1, shift2, scale2 = jnp.split(mod[:, None, :], 4, axis=-1)
    else:
      shift1 = scale1 = shift2 = scale2 = 0.0
    h = layer_norm(cfg, "ln_attn")(x) * (1 + scale1) + shift1
    qkv = rows(dense(cfg, 3 * width, "qkv", ("embed", "heads")), h)  # [batch, length, 3 * width]
    # Heads move ahead of positions once, so both attention products are plain batched matmuls
    # over [batch, heads] (on XLA:CPU about half the time of the head-interleaved einsums).
    qkv = qkv.reshape(batch, length, 3, cfg.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [batch, heads, length, head_dim]
    if cache is not None:
      k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, 0, position, 0))
      v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, 0, position, 0))
      cache = (k, v)
      bias = jnp.where(jnp.arange(k.shape[2]) <= position, 0.0, -1e9)[None, None, None]
    logits = jnp.matmul(q, k.swapaxes(-1, -2)) / math.sqrt(head_dim)  # [batch, heads, q, k]
    if bias is not None:
      logits = logits + bias.astype(logits.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=deterministic)
    attended = jnp.matmul(weights, v).transpose(0, 2, 1, 3).reshape(batch, length, width)
    attended = rows(dense(cfg, width, "attn_out", ("heads", "embed")), attended)
    x = x + nn.Dropout(cfg.dropout_rate)(attended, deterministic=deterministic)
    h = layer_norm(cfg, "ln_mlp")(x) * (1 + scale2) + shift2
    h = nn.gelu(rows(dense(cfg, cfg.mlp_dim, "mlp_in", ("embed", "mlp")), h))
    h = rows(dense(cfg, width, "mlp_out", ("mlp", "embed")), h)
    x = x + nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
    return x, cache


class Stack(nn.Module):
  """`num_layers` blocks, unrolled or as one `nn.scan` (one compiled layer body)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x, cond, bias, deterministic: bool, *, caches=None, position=None):
    """x -> the final LayerNorm's output; with `caches` (one (keys, values) per layer, unscanned
    layers only) one position is decoded: -> (output, new caches)."""
    cfg = self.config
    if caches is not None:
      if cfg.scan_layers:
        raise ValueError("Cached decoding needs unscanned layers (model.scan_layers=False).")
      new_caches = []
      for i in range(cfg.num_layers):
        x, cache = Block(cfg, name=f"layer_{i}")(x, cond, None, True, cache=caches[i],
                                                   position=position)
        new_caches.append(cache)
      return layer_norm(cfg, "ln_final")(x), new_caches
    block = Block
    layer_fn = partitioning.layer_params_fn()
    if cfg.scan_layers and layer_fn is not None and not self.is_initializing():
      block = nn.map_variables(Block, "params", lambda v: {**v, "params": layer_fn(v["params"])})
    # Rematerialized blocks keep only their inputs for the backward pass (argument 4, after self,
    # is the static `deterministic` flag); a layer's gathered parameters are gathered again there.
    block = nn.remat(block, static_argnums=(4,)) if cfg.remat else block
    if cfg.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, name="layers")(x, cond, bias, deterministic)
    else:
      for i in range(cfg.num_layers):
        x, _ = block(cfg, name=f"layer_{i}")(x, cond, bias, deterministic)
    return layer_norm(cfg, "ln_final")(x)


class TransformerDenoiser(nn.Module):
  """Bidirectional denoiser: (x_t, log-SNR, self-conditioning, condition) -> [batch, length, out_dim].

  log-SNR is [batch] (one noise level per sequence) or [batch, length] (one per position).
  """
  config: ModelConfig
  out_dim: int

  @nn.compact
  def __call__(self, x_t, log_snr, x0_selfcond=None, *, cond=None, cond_mask=None, mask=None,
               context=None, train: bool = False):
    """`context` [batch, m_c, dim] (models with `source_context`): clean latents the blocks
    attend to beside x_t's, with their own projection and positions; None is the null context
    (zeros). The output covers x_t's positions only."""
    cfg = self.config
    dtype = cfg.compute_dtype
    batch, length, _ = x_t.shape
    if cond is not None:  # prefix / infilling: known positions carry their clean latents
      if not cfg.conditioning or cond_mask is None:
        raise ValueError("cond needs cond_mask and a model built with model.conditioning=True.")
      x_t = jnp.where(cond_mask[..., None], cond, x_t)
    if x0_selfcond is None:
      x0_selfcond = jnp.zeros_like(x_t)
    inputs = jnp.concatenate([x_t, x0_selfcond], axis=-1) if cfg.self_conditioning else x_t
    h = rows(dense(cfg, cfg.width, "in_proj", ("latent", "embed")), inputs.astype(dtype))
    pos_init = logical(nn.initializers.normal(cfg.pos_init_std), "length", "embed")
    pos = self.param("pos_embedding", pos_init, (cfg.seq_len, cfg.width))
    h = h + pos[None, :length].astype(dtype)
    if cfg.conditioning:  # a learned marker on the positions whose latents are given
      flag = self.param("cond_flag", logical(nn.initializers.normal(0.02), "embed"), (cfg.width,))
      if cond_mask is not None:
        h = h + cond_mask[..., None].astype(dtype) * flag.astype(dtype)
    t_emb = sinusoidal_features(log_snr, cfg.width)
    t_emb = dense(cfg, cfg.width, "time_mlp_in", ("embed", "mlp"))(t_emb)
    t_emb = dense(cfg, cfg.width, "time_mlp_out", ("mlp", "embed"))(nn.silu(t_emb))
    if log_snr.ndim == 2:  # one noise level per position: each position's embedding is added to
      h = h + t_emb        # its input, and the blocks' conditioning is their mean over positions
      t_emb = jnp.mean(t_emb, axis=1)
    elif cfg.time_conditioning == "add":
      h = h + t_emb[:, None, :]
    block_cond = None if cfg.time_conditioning == "add" else nn.silu(t_emb)  # [batch, width]
    if cfg.source_context:
      h, mask = self._with_context(h, mask, x_t if context is None else context, context is None)
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=not train)
    h = Stack(cfg, name="stack")(h, block_cond, attention_bias(mask, h.shape[1], False), not train)
    h = h[:, h.shape[1] - length:]
    out = rows(dense(cfg, self.out_dim, "out_proj", ("embed", "latent")), h)
    return out.astype(jnp.float32)


  def _with_context(self, h, mask, context, null: bool):
    """[context positions; h] and the mask over both; `null`: the context is zeros shaped like
    `context`."""
    cfg = self.config
    if null:
      context = jnp.zeros_like(context)
    c = rows(dense(cfg, cfg.width, "context_proj", ("latent", "embed")),
             context.astype(cfg.compute_dtype))
    pos_init = logical(nn.initializers.normal(cfg.pos_init_std), "length", "embed")
    pos = self.param("context_pos_embedding", pos_init, (cfg.seq_len, cfg.width))
    c = c + pos[None, :c.shape[1]].astype(c.dtype)
    if mask is not None:
      mask = jnp.concatenate([jnp.ones(c.shape[:2], bool), mask], axis=1)
    return jnp.concatenate([c, h], axis=1), mask


class TransformerLM(nn.Module):
  """Causal transformer LM with a tied read-out: the evaluation judge and the AR baseline."""
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, train: bool = False, return_hidden: bool = False):
    """Next-token logits [batch, length, vocab] (and the final hidden states if asked)."""
    cfg = self.config
    dtype = cfg.compute_dtype
    _, length = tokens.shape
    embed = nn.Embed(cfg.vocab_size, cfg.width, name="embed",
                     embedding_init=logical(nn.initializers.normal(0.02), "vocab", "embed"))
    pos = self.param("pos_embedding", logical(nn.initializers.normal(0.02), "length", "embed"),
                     (cfg.seq_len, cfg.width))
    h = (embed(tokens) + pos[None, :length]).astype(dtype)
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=not train)
    h = Stack(cfg, name="stack")(h, None, attention_bias(None, length, True), not train)
    hidden = h.astype(jnp.float32)
    logits = embed.attend(hidden.reshape(-1, cfg.width))  # as rows, see `rows`
    logits = logits.reshape(hidden.shape[:-1] + (-1,))  # [batch, length, vocab]
    return (logits, hidden) if return_hidden else logits


class TransformerLMStep(nn.Module):
  """One step of `TransformerLM`'s cached decoding, on the same parameters: token [batch] int at
  `position` (a traced scalar) with each layer's (keys, values) cache -> (logits [batch, vocab] of
  the next position, the caches with this position written in)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, token, position, caches):
    cfg = self.config
    embed = nn.Embed(cfg.vocab_size, cfg.width, name="embed",
                     embedding_init=logical(nn.initializers.normal(0.02), "vocab", "embed"))
    pos = self.param("pos_embedding", logical(nn.initializers.normal(0.02), "length", "embed"),
                     (cfg.seq_len, cfg.width))
    h = embed(token[:, None]) + jax.lax.dynamic_slice_in_dim(pos, position, 1)[None]
    h, caches = Stack(cfg, name="stack")(h.astype(cfg.compute_dtype), None, None, True,
                                         caches=caches, position=position)
    return embed.attend(h[:, 0].astype(jnp.float32)), caches

  def empty_caches(self, batch: int):
    """Per layer (keys, values), each [batch, heads, seq_len, head_dim] of zeros."""
    cfg = self.config
    shape = (batch, cfg.num_heads, cfg.seq_len, cfg.width // cfg.num_heads)
    return [(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
            for _ in range(cfg.num_layers)]
