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
