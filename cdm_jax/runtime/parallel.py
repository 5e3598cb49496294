"""Data parallelism and sharded train states: the 2-D ('data', 'fsdp') mesh, shardings, host
batches -> global arrays, per-example keys, and the logical axis rules.

The compiled steps (`steps`, `generate.make_sample_fn`) run per-device code under `jax.shard_map`
inside `jax.jit` on this mesh. Batches are split over both axes (`BATCH`, every device its own
rows); parameters are replicated, or with FSDP split over the 'fsdp' axis only (ZeRO-3: each group
of `fsdp` devices holds one copy of the train state between them, and the 'data' axis replicates
the groups). All per-example randomness derives from the *global* example index, so results do
not depend on how many devices share the batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

Array = jax.Array
DATA = "data"
FSDP = "fsdp"
BATCH = (DATA, FSDP)  # batches are split over every device of the mesh

# Logical axis names of the parameters (models/partitioning.py) -> mesh axes. A parameter is split
# along its first dimension whose name maps to a mesh axis that is still free and whose size that
# axis divides; every other dimension stays whole.
RULES = (("vocab", FSDP), ("embed", FSDP), ("mlp", FSDP), ("heads", FSDP),
         ("latent", None), ("length", None), ("layers", None))


def make_mesh(num_devices: int | None = None, fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
  """The ('data', 'fsdp') mesh over every process's devices, grouped by process (so that each
  process's share of a batch is one contiguous block of rows, and an FSDP group of at most one
  process's devices stays on that process). `num_devices`: how many devices of each process to use
  (None: all of them); `fsdp`: devices per FSDP group (1: replicated state; 0: all devices);
  `devices`: other devices than `jax.devices()` (e.g. a TPU topology's, to compile for it)."""
  by_process = {}
  for device in jax.devices() if devices is None else devices:
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
  fsdp = fsdp or len(devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"An FSDP axis of {fsdp} devices does not divide the {len(devices)} devices.")
  return jax.sharding.Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), (DATA, FSDP))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(local_batch: np.ndarray, mesh, axis: int = 0) -> Array:
  """Host-local numpy batch -> global array split over the mesh (each process passes its part)."""
  spec = [None] * local_batch.ndim
  spec[axis] = BATCH
  sharding = NamedSharding(mesh, P(*spec))
  return jax.make_array_from_process_local_data(sharding, local_batch)


def global_array(batch: np.ndarray, mesh, axis: int = 0) -> Array:
  """A batch that every process holds whole (e.g. an evaluation batch) -> the same global array
  split over the mesh; each process places only its devices' rows."""
  spec = [None] * batch.ndim
  spec[axis] = BATCH
  return jax.make_array_from_callback(batch.shape, NamedSharding(mesh, P(*spec)),
                                      lambda index: batch[index])


def example_keys(rng: Array, num_examples: int, offset=0) -> Array:
  """One raw key per example [num_examples, 2]: example `offset + i` of `rng`'s stream,
  independent of the device layout and of how a request is split into batches."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(num_examples))


# Fully sharded data parallelism (FSDP): every array of the train state with at least `min_size`
# elements (parameters, Adam moments, EMA) is split over the 'fsdp' axis by the logical axis rules;
# smaller ones (biases, norms, the time warp) stay replicated. The step gathers the parameters for
# the forward pass; the gradient of that gather is a reduce-scatter, so each device updates only its
# slice of parameters, Adam moments and EMA.


def mesh_spec(names: P, shape: tuple, axis_sizes: dict, min_size: int, rules=RULES) -> P:
  """The mesh PartitionSpec of an array of `shape` whose dimensions carry the logical `names`
  (P() when it is smaller than `min_size`, has no names, or no dimension can be split)."""
  if not names or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  spec, used = [None] * len(shape), set()
  for dim, name in enumerate(names):
    for logical_name, mesh_axis in rules:
      if logical_name != name or mesh_axis in used:
        continue
      if mesh_axis is not None and axis_sizes.get(mesh_axis, 1) > 1 and (
          shape[dim] % axis_sizes[mesh_axis] == 0):
        spec[dim] = mesh_axis
        used.add(mesh_axis)
      break  # the first rule for this name whose mesh axis is free decides
  return P(*spec) if used else P()


def state_specs(shapes, names, mesh, min_size: int | None):
  """The mesh PartitionSpec of every leaf of `shapes` (arrays or ShapeDtypeStructs), from its
  logical `names` (`models.partitioning.logical_specs`); P() everywhere when `min_size` is None
  (replicated state)."""
  if min_size is None:
    return jax.tree.map(lambda _: P(), shapes)
  sizes = dict(mesh.shape)
  return jax.tree.map(lambda x, n: mesh_spec(n, tuple(x.shape), sizes, min_size), shapes, names)


def shardings(mesh, specs):
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, P))


def sharded_dim(spec: P) -> int | None:
  """The dimension `spec` splits over the FSDP axis, or None."""
  return next((i for i, name in enumerate(spec) if name == FSDP), None)


def gather(tree, specs):
  """Inside the step (`shard_map`): every sharded leaf all-gathered to its full shape."""
  def one(x, spec):
    dim = sharded_dim(spec)
    return x if dim is None else jax.lax.all_gather(x, FSDP, axis=dim, tiled=True)
  return jax.tree.map(one, tree, specs, is_leaf=lambda x: isinstance(x, P))


def gather_params(params, specs, layers: tuple | None = None):
  """Inside the step: (the parameters for the forward pass, a per-layer gather or None). Every
  sharded leaf is all-gathered, except the leaves under the path `layers` (a scanned stack, layer
  axis first): they stay sharded, and the function returned gathers one layer's tree inside the
  scan (`models.partitioning.gathering_layers`), so that only one layer is whole at a time."""
  flat, flat_specs = traverse_util.flatten_dict(params), traverse_util.flatten_dict(specs)
  n = len(layers or ())
  inside = lambda path: layers is not None and path[:n] == layers
  layer_specs = {path[n:]: P(*spec[1:]) for path, spec in flat_specs.items() if inside(path)}
  if not any(sharded_dim(spec) is not None for spec in layer_specs.values()):
    return gather(params, specs), None
  outer = {path: x if inside(path) else gather(x, flat_specs[path]) for path, x in flat.items()}
  layer_specs = traverse_util.unflatten_dict(layer_specs)
  return traverse_util.unflatten_dict(outer), lambda tree: gather(tree, layer_specs)


def global_norm(tree, specs) -> Array:
  """Inside the step: the L2 norm of the whole tree, whose sharded leaves' slices (each the same
  on every 'data' row of the mesh) have their squares summed over the FSDP axis."""
  squares = [(jnp.sum(jnp.square(x.astype(jnp.float32))), sharded_dim(spec) is not None)
             for x, spec in zip(jax.tree.leaves(tree),
                                jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))]
  local = sum((s for s, sharded in squares if sharded), jnp.zeros((), jnp.float32))
  whole = sum((s for s, sharded in squares if not sharded), jnp.zeros((), jnp.float32))
  return jnp.sqrt(jax.lax.psum(local, FSDP) + whole)
