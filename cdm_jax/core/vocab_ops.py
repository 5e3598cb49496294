"""Vocabulary-wide operations on latents, in row blocks: argmax of x.E^T + b, and read-out CE.

Computed whole, a [tokens, vocab] score matrix is streamed from memory by every pass over it (max,
softmax, gradients); in blocks of a few hundred rows it stays in cache, and no [.., vocab, dim]
tensor is formed. Measurements behind each layout choice: benchmarks/NOTES.md.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
ROW_BLOCK = 128  # rows per block: [128, vocab] float32 scores are 5.6 MB at vocab 11k


def row_blocks(fn: Callable[[Array], Array], x: Array, block: int = ROW_BLOCK) -> Array:
  """Applies `fn: [rows, d] -> [rows, ...]` to the rows of x [..., d] in blocks (`lax.map`), padding
  the last block, and returns [..., ...] with x's leading shape."""
  lead, dim = x.shape[:-1], x.shape[-1]
  flat = x.reshape(-1, dim)
  rows = flat.shape[0]
  if rows <= block:
    out = fn(flat)
  else:
    padded = -(-rows // block) * block
    flat = jnp.pad(flat, ((0, padded - rows), (0, 0)))
    out = jax.lax.map(fn, flat.reshape(-1, block, dim))
    out = out.reshape((padded,) + out.shape[2:])[:rows]
  return out.reshape(lead + out.shape[1:])


def first_argmax(scores: Array, axis: int = -1) -> Array:
  """argmax over `axis` as max + first index reaching it: two plain reductions, which XLA:CPU runs
  faster than its variadic argmax reduction."""
  size = scores.shape[axis]
  iota = jax.lax.broadcasted_iota(jnp.int32, scores.shape, axis % scores.ndim)
  top = jnp.max(scores, axis=axis, keepdims=True)
  index = jnp.min(jnp.where(scores >= top, iota, size), axis=axis)
  return jnp.minimum(index, size - 1)  # all-NaN rows: no score reaches the max


def _rounds_operands(operand_dtype) -> bool:
  """Whether `operand_dtype` (None: float32) rounds float32 matmul operands."""
  return operand_dtype is not None and jnp.dtype(operand_dtype) != jnp.float32


def dot_rows(a: Array, b: Array, operand_dtype=None) -> Array:
  """a . b^T over the last axes, [m, d] x [n, d] -> [m, n] float32. With `operand_dtype` (e.g.
  bfloat16, the model's `matmul_dtype`) both operands are rounded to it first and the products
  accumulate in float32."""
  if _rounds_operands(operand_dtype):
    a, b = a.astype(operand_dtype), b.astype(operand_dtype)
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def argmax_scores(x: Array, table: Array, column_bias: Array | None = None,
                  operand_dtype=None) -> Array:
  """argmax_v (x . table[v] + column_bias[v]) for every row of x [..., d] -> [...] int32.

  Each block's scores are laid out [vocab, rows] and reduced over the leading axis, which XLA:CPU
  vectorizes across the rows. In float32 the bias rides in the matmul as one more column of the
  table (one pass fewer over the scores; same argmax up to rounding of near-ties). A bfloat16
  `operand_dtype` makes the result approximate: near-ties within bf16 rounding may pick a
  neighbour; its bias is added in float32 after the product.
  """
  fold_bias = column_bias is not None and not _rounds_operands(operand_dtype)
  if fold_bias:
    table = jnp.concatenate([table, column_bias[:, None].astype(table.dtype)], axis=1)

  def block(rows):
    if fold_bias:
      rows = jnp.concatenate([rows, jnp.ones((rows.shape[0], 1), rows.dtype)], axis=1)
      return first_argmax(dot_rows(table, rows), axis=0)
    scores = dot_rows(table, rows, operand_dtype)  # [vocab, rows]
    return first_argmax(scores if column_bias is None else scores + column_bias[:, None], axis=0)
  return row_blocks(block, x)


def _log_normalizer(rows: Array, table: Array, bias: Array, operand_dtype) -> Array:
  return jax.nn.logsumexp(dot_rows(rows, table, operand_dtype) + bias, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _block_log_normalizer(rows: Array, table: Array, bias: Array, operand_dtype) -> Array:
  """log sum_v exp(rows . table[v] + bias[v]) for one block of rows [block, d] -> [block].

  Its backward keeps only the block's log-normalizer from the forward and recomputes the logits
  once: softmax = exp(logits - log-normalizer) is one pass over them (autodiff of a rematerialized
  logsumexp makes four)."""
  return _log_normalizer(rows, table, bias, operand_dtype)


def _block_log_normalizer_fwd(rows, table, bias, operand_dtype):
  log_norm = _log_normalizer(rows, table, bias, operand_dtype)
  return log_norm, (rows, table, bias, log_norm)


def _block_log_normalizer_bwd(operand_dtype, residuals, grad):
  rows, table, bias, log_norm = residuals
  probs = jnp.exp(dot_rows(rows, table, operand_dtype) + bias - log_norm[:, None]) * grad[:, None]
  low = (lambda a: a.astype(operand_dtype)) if _rounds_operands(operand_dtype) else (lambda a: a)
  d_rows = jax.lax.dot_general(low(probs), low(table), (((1,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)
  d_table = jax.lax.dot_general(probs, rows, (((0,), (0,)), ((), ())))  # float32, like Dense kernels
  return d_rows, d_table, jnp.sum(probs, 0)


_block_log_normalizer.defvjp(_block_log_normalizer_fwd, _block_log_normalizer_bwd)


def readout_cross_entropy(x: Array, table: Array, bias: Array | None, tokens: Array, *,
                          block: int = 256, operand_dtype=None) -> Array:
  """-log softmax(x.E^T + b)[token] per position, [...]: the tied read-out's cross-entropy.

  The label logit is a gather; the log-normalizer runs in row blocks whose backward recomputes
  the logits from the block's rows, so no [tokens, vocab] logits or gradients are stored between
  the passes. `operand_dtype` (e.g. bfloat16) rounds the logits matmul's operands to it,
  accumulating in float32 (the model's `matmul_dtype`); the label logit and the softmax stay
  float32.
  """
  bias = jnp.zeros(table.shape[0], x.dtype) if bias is None else bias
  x = x.astype(jnp.float32)
  label = jnp.sum(x * jnp.take(table, tokens, axis=0), axis=-1) + jnp.take(bias, tokens)
  log_norm = row_blocks(lambda rows: _block_log_normalizer(rows, table, bias, operand_dtype), x,
                        block=block)
  return log_norm - label


def token_cross_entropy(logits: Array, tokens: Array) -> Array:
  """-log softmax(logits)[token] per position, [...] for logits [..., vocab] (computed in float32)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
