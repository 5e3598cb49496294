"""Decoders (latents -> tokens) and clamps (latents -> latents on the embedding manifold), each
chosen by name. Each is one [.., d] x [d, vocab] matmul in row blocks (`vocab_ops`); no
[batch, length, vocab, dim] tensor is formed."""

from typing import Callable

import jax
import jax.numpy as jnp

from cdm_jax.core import vocab_ops
from cdm_jax.runtime import registry

Array = jax.Array

DECODERS = registry.Registry("decoder")
register_decoder = DECODERS.register


@register_decoder("l2")
def decode_l2(x, table, bias=None, operand_dtype=None):
  """Nearest embedding in L2: argmin ||x - e||^2 = argmax (2 x.e - ||e||^2)."""
  del bias
  return vocab_ops.argmax_scores(2.0 * x, table, -jnp.sum(table**2, axis=-1), operand_dtype)


@register_decoder("cosine")
def decode_cosine(x, table, bias=None, operand_dtype=None):
  del bias
  unit = table / jnp.maximum(jnp.linalg.norm(table, axis=-1, keepdims=True), 1e-6)
  return vocab_ops.argmax_scores(x, unit, None, operand_dtype)


@register_decoder("readout")
def decode_readout(x, table, bias=None, operand_dtype=None):
  """Argmax of the tied read-out x.E^T + b (ranks shrunk x0_hat correctly, unlike L2)."""
  return vocab_ops.argmax_scores(x, table, bias, operand_dtype)


CONTEXTUAL_DECODER = "contextual"  # `readout.ContextualDecoder`, trained per workdir; not a rounding


def decode(x, table, bias=None, method: str = "readout", operand_dtype=None):
  """Token ids [...] for latents [..., d]; `operand_dtype` as in `vocab_ops.dot_rows`."""
  return DECODERS.get(method)(x, table, bias, operand_dtype)


def make_clamp_fn(mode: str, table: Array, bias: Array | None = None, *, decoder: str = "readout",
                  temperature: float = 1.0, operand_dtype=None) -> Callable[[Array], Array] | None:
  """"none"; "hard": snap to the decoded embedding (Diffusion-LM); "soft": the read-out's
  expected embedding softmax((x.E^T + b) / temperature) E. `operand_dtype` (the model's
  `matmul_dtype`) rounds the vocabulary matmul's operands, e.g. to bfloat16."""
  if mode == "none":
    return None
  if mode == "hard":
    return lambda x: jnp.take(table, decode(x, table, bias, decoder, operand_dtype), axis=0)
  if mode == "soft":
    if not temperature > 0:
      raise ValueError(f"The soft clamp's temperature must be > 0, got {temperature}.")

    def soft_rows(rows):
      logits = vocab_ops.dot_rows(rows, table, operand_dtype)
      if bias is not None:
        logits = logits + bias
      return jax.nn.softmax(logits / temperature, axis=-1) @ table
    return lambda x: vocab_ops.row_blocks(soft_rows, x)
  raise ValueError(f"Unknown clamp {mode!r}; choose none, hard or soft.")


