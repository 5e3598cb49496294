"""Logical axis names of the modules' parameters.

Every parameter of the denoiser, the embedding table and the judge LM is declared through
`logical` with a name per dimension:

  vocab   the vocabulary            latent  the diffusion space (embed_dim)
  embed   the transformer's width   heads   attention projections (heads x head_dim)
  mlp     hidden units              length  positions
  layers  the layer axis of a scanned stack (added by `nn.scan`)

`parallel.RULES` maps these names to mesh axes. Initialization returns plain arrays everywhere;
only `logical_specs` traces an initialization with the names attached (as Flax's
`LogicallyPartitioned` boxes), so no other code handles boxed parameters.

`gathering_layers(fn)` hands a scanned stack's layer parameters to `fn` one layer at a time inside
the scan (FSDP: each layer is all-gathered just before its use, and its gradient reduce-scattered
right after, instead of the whole model at once).
"""

import contextlib
import contextvars

import flax.linen as nn
import jax

_ANNOTATE = contextvars.ContextVar("cdm_jax_annotate_partitioning", default=False)
_LAYER_FN = contextvars.ContextVar("cdm_jax_layer_params_fn", default=None)


def logical(init, *names: str | None):
  """`init`, whose parameter carries the logical axis `names` while `logical_specs` traces."""
  return nn.with_logical_partitioning(init, names) if _ANNOTATE.get() else init


def logical_specs(init_fn):
  """(shapes, names) of `init_fn()`'s output under `jax.eval_shape`: ShapeDtypeStructs, and a
  PartitionSpec of logical names per leaf (P() for a leaf declared without names). Optimizer
  states and EMA copies made inside `init_fn` inherit their parameter's names."""
  token = _ANNOTATE.set(True)
  try:
    boxed = jax.eval_shape(init_fn)
  finally:
    _ANNOTATE.reset(token)
  return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


@contextlib.contextmanager
def gathering_layers(fn):
  """While tracing inside this context, a scanned stack (`model.scan_layers`) passes each layer's
  parameter tree through `fn` inside the scan body."""
  token = _LAYER_FN.set(fn)
  try:
    yield
  finally:
    _LAYER_FN.reset(token)


def layer_params_fn():
  """The function set by `gathering_layers`, or None."""
  return _LAYER_FN.get()
