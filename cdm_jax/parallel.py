"""Data parallelism: the 1-D ('data',) mesh, shardings, host batches -> global arrays, and
per-example keys.

The compiled steps (`steps`, `generate.make_sample_fn`) run per-device code under `jax.shard_map`
inside `jax.jit` on this mesh: parameters replicated, batches split on their leading axis. All
per-example randomness derives from the *global* example index, so results do not depend on how
many devices share the batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

Array = jax.Array
AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """The ('data',) mesh over every process's devices, grouped by process (so that each process's
  share of a batch is one contiguous block of rows). `num_devices`: how many devices of each
  process to use (None: all of them)."""
  by_process = {}
  for device in jax.devices():
    by_process.setdefault(device.process_index, []).append(device)
  devices = []
  for process in sorted(by_process):
    local = sorted(by_process[process], key=lambda d: d.id)
    if num_devices is not None:
      if num_devices > len(local):
        raise ValueError(f"Asked for {num_devices} devices per process, only {len(local)} are "
                         f"visible to process {process}.")
      local = local[:num_devices]
    devices.extend(local)
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(local_batch: np.ndarray, mesh, axis: int = 0) -> Array:
  """Host-local numpy batch -> global array split over the mesh (each process passes its part)."""
  spec = [None] * local_batch.ndim
  spec[axis] = AXIS
  sharding = NamedSharding(mesh, P(*spec))
  return jax.make_array_from_process_local_data(sharding, local_batch)


def global_array(batch: np.ndarray, mesh, axis: int = 0) -> Array:
  """A batch that every process holds whole (e.g. an evaluation batch) -> the same global array
  split over the mesh; each process places only its devices' rows."""
  spec = [None] * batch.ndim
  spec[axis] = AXIS
  return jax.make_array_from_callback(batch.shape, NamedSharding(mesh, P(*spec)),
                                      lambda index: batch[index])


def example_keys(rng: Array, num_examples: int) -> Array:
  """One raw key per example [num_examples, 2], independent of the device layout."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_examples))


# Fully sharded data parallelism (FSDP, ZeRO-3 on the 'data' axis): each array of the train state
# with at least `min_size` elements is split over the devices along its largest dimension that
# divides by the device count; smaller ones (biases, norms, the time warp) stay replicated. The
# step gathers the parameters for the forward pass; the gradient of that gather is a
# reduce-scatter, so each device updates only its slice of parameters, Adam moments and EMA.


def fsdp_spec(shape: tuple, num_devices: int, min_size: int) -> P:
  """P with AXIS on the largest dimension divisible by `num_devices` (the first of equals), or P()
  for a small or indivisible array."""
  if num_devices < 2 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  candidates = [i for i, n in enumerate(shape) if n % num_devices == 0]
  if not candidates:
    return P()
  dim = max(candidates, key=lambda i: (shape[i], -i))
  return P(*([None] * dim + [AXIS]))


def state_specs(tree, num_devices: int, min_size: int | None):
  """The PartitionSpec of every leaf of `tree` (arrays or ShapeDtypeStructs): `fsdp_spec`, or P()
  everywhere when `min_size` is None (replicated state)."""
  if min_size is None:
    return jax.tree.map(lambda _: P(), tree)
  return jax.tree.map(lambda x: fsdp_spec(tuple(x.shape), num_devices, min_size), tree)


def state_shardings(tree, mesh, min_size: int | None):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                      state_specs(tree, mesh.devices.size, min_size),
                      is_leaf=lambda x: isinstance(x, P))


def sharded_dim(spec: P) -> int | None:
  """The dimension `spec` splits over AXIS, or None."""
  return next((i for i, name in enumerate(spec) if name == AXIS), None)


def gather(tree, specs):
  """Inside the step (`shard_map`): every sharded leaf all-gathered to its full shape."""
  def one(x, spec):
    dim = sharded_dim(spec)
    return x if dim is None else jax.lax.all_gather(x, AXIS, axis=dim, tiled=True)
  return jax.tree.map(one, tree, specs, is_leaf=lambda x: isinstance(x, P))


def global_norm(tree, specs) -> Array:
  """Inside the step: the L2 norm of the whole tree, sharded leaves' squares summed over devices."""
  squares = [(jnp.sum(jnp.square(x.astype(jnp.float32))), sharded_dim(spec) is not None)
             for x, spec in zip(jax.tree.leaves(tree),
                                jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))]
  local = sum((s for s, sharded in squares if sharded), jnp.zeros((), jnp.float32))
  whole = sum((s for s, sharded in squares if not sharded), jnp.zeros((), jnp.float32))
  return jnp.sqrt(jax.lax.psum(local, AXIS) + whole)
