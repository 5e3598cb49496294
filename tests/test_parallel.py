import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cdm_jax.core import diffusion
from cdm_jax import sampling
from cdm_jax.runtime import parallel
from cdm_jax.core import sample_options
from cdm_jax.core import schedules
from cdm_jax.training import steps
from cdm_jax.models import DiffusionLM, ModelConfig, TransformerLM, partitioning

CONFIG = ModelConfig(vocab_size=40, seq_len=8, embed_dim=8, width=32, num_layers=2, num_heads=2,
                     mlp_dim=64)


def run_steps(num_devices, num_steps=3, steps_per_call=1):
  model = DiffusionLM(CONFIG)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,)))
  # The key bias has an exactly-zero gradient (softmax ignores a per-query constant); with Adam's
  # default eps its rounding noise would be scaled up to full-size steps, so use a larger eps.
  tx = optax.adamw(1e-2, eps=1e-3)
  mesh = parallel.make_mesh(num_devices)
  loss_config = diffusion.LossConfig(time_warp=True, anchor_weight=0.1)
  step = steps.make_train_step(model, tx, schedules.get_schedule("cosine"), loss_config, mesh,
                                  global_batch=8, ema_decay=0.99, steps_per_call=steps_per_call)
  state = jax.device_put(steps.init_train_state(params, tx, jax.random.PRNGKey(1)),
                         parallel.replicated(mesh))
  data = np.random.default_rng(0).integers(0, 40, (num_steps, 8, 8)).astype(np.int32)
  losses = []
  for i in range(0, num_steps, steps_per_call):
    chunk = data[i:i + steps_per_call] if steps_per_call > 1 else data[i]
    axis = 1 if steps_per_call > 1 else 0
    state, metrics = step(state, parallel.shard_batch(chunk, mesh, axis),
                          parallel.shard_batch(chunk > 0, mesh, axis))
    losses.append(float(metrics["loss"]))  # blocks on every step
  return state, losses, step


@pytest.mark.slow
def test_four_devices_match_one_device():
  state1, losses1, _ = run_steps(1)
  state4, losses4, _ = run_steps(4)
  assert int(state1.step) == int(state4.step) == 3
  np.testing.assert_allclose(losses1, losses4, rtol=1e-4)
  chex.assert_trees_all_close(state1.params, state4.params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state1.ema_params, state4.ema_params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state1.warp, state4.warp, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_train_step_compiles_once():
  _, _, step = run_steps(2, num_steps=4)
  assert step._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.slow
def test_several_steps_per_dispatch_match_single_steps():
  state1, _, _ = run_steps(2, num_steps=4)
  state_scan, _, _ = run_steps(2, num_steps=4, steps_per_call=2)
  assert int(state_scan.step) == 4
  chex.assert_trees_all_close(state1.params, state_scan.params, rtol=1e-4, atol=1e-5)


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match="not divisible"):
    steps.make_train_step(DiffusionLM(CONFIG), optax.sgd(0.1), schedules.get_schedule("cosine"),
                          diffusion.LossConfig(), parallel.make_mesh(4), global_batch=6, ema_decay=0.9)


@pytest.mark.slow
def test_sample_fn_same_tokens_on_any_device_count_and_compiles_once():
  model = DiffusionLM(CONFIG)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,)))
  sched = schedules.get_schedule("cosine")
  outs = []
  for num_devices in (1, 2, 4):
    fn = sampling.make_sample_fn(model, sched, parallel.make_mesh(num_devices), sample_options.SampleConfig(
        num_samples=6, num_steps=5, sampler="ddpm", clamp="soft"))
    outs.append(np.asarray(fn(params, jax.random.PRNGKey(7))))
  assert outs[0].shape == (6, 8)
  for out in outs[1:]:
    np.testing.assert_array_equal(out, outs[0])
  fn = sampling.make_sample_fn(model, sched, parallel.make_mesh(2),
                               sample_options.SampleConfig(num_samples=4, num_steps=5))
  seeds = [np.asarray(fn(params, jax.random.PRNGKey(seed))) for seed in range(3)]
  assert fn._cache_size() == 1  # pylint: disable=protected-access
  assert not np.array_equal(seeds[0], seeds[1])  # the key is an argument, not a constant


def _state_layout(model, tx, mesh, min_size, abstract=False):
  """(initial train state, or its shapes if `abstract`; its mesh PartitionSpecs) for `model`."""
  init = lambda: steps.init_train_state(
      model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,))), tx,
      jax.random.PRNGKey(1))
  shapes, names = partitioning.logical_specs(init)
  return shapes if abstract else init(), parallel.state_specs(shapes, names, mesh, min_size)


@functools.lru_cache(maxsize=None)  # the replicated run is the reference of several tests
def _fsdp_run(min_size, fsdp=4, num_steps=5, config=CONFIG):
  """`num_steps` AdamW steps (clipped at 1.0, so the FSDP path clips by the global norm) on a
  (4 / fsdp, fsdp) mesh; (losses, grad norms, final params on the host, state bytes on one device,
  bytes of the leaves that stay whole, specs of the params)."""
  model = DiffusionLM(config)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, eps=1e-3))
  mesh = parallel.make_mesh(4, fsdp=fsdp)
  state, specs = _state_layout(model, tx, mesh, min_size)
  step = steps.make_train_step(model, tx, schedules.get_schedule("cosine"),
                               diffusion.LossConfig(time_warp=True), mesh, global_batch=8,
                               ema_decay=0.99, state_specs=specs, grad_clip_norm=1.0)
  state = jax.device_put(state, parallel.shardings(mesh, specs))
  per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
  whole = sum(x.nbytes for x in jax.tree.leaves(state) if x.sharding.is_fully_replicated)
  data = np.random.default_rng(0).integers(0, 40, (num_steps, 8, 8)).astype(np.int32)
  losses, norms = [], []
  for batch in data:
    state, metrics = step(state, parallel.shard_batch(batch, mesh),
                          parallel.shard_batch(batch > 0, mesh))
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  param_specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
  return losses, norms, jax.device_get(state.params), per_device, whole, param_specs


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [4, 2])
def test_fsdp_matches_replicated_with_a_share_of_the_state_per_device(fsdp):
  """FSDP over all 4 devices (mesh 1 x 4), and in 2 groups of 2 (mesh 2 x 2: the 'data' axis
  replicates the groups): the replicated run's losses, norms and parameters, with 1/fsdp of the
  shardable state per device."""
  losses_r, norms_r, params_r, bytes_r, _, _ = _fsdp_run(None)
  losses_f, norms_f, params_f, bytes_f, whole, specs = _fsdp_run(256, fsdp)
  assert any(parallel.sharded_dim(s) is not None for s in specs)
  assert any(parallel.sharded_dim(s) is None for s in specs)  # biases, norms stay whole
  np.testing.assert_allclose(losses_f, losses_r, rtol=1e-4)
  np.testing.assert_allclose(norms_f, norms_r, rtol=1e-4)
  assert max(norms_r) > 1.0  # clipping acted, by the global norm in the FSDP step
  chex.assert_trees_all_close(params_f, params_r, atol=1e-3)
  assert bytes_f <= (bytes_r - whole) / fsdp + whole and bytes_f < 1.6 * bytes_r / fsdp


@pytest.mark.slow
def test_fsdp_gathers_a_scanned_stack_one_layer_at_a_time():
  """A scanned, rematerialized stack under FSDP: the replicated run's losses and parameters, and
  the compiled step's temporaries stay below the size of the whole parameters (each layer is
  gathered inside the scan; gathering the model at once measured 18.2 MB of temporaries for these
  4.4 MB of parameters, layer by layer 2.4 MB)."""
  scanned = dataclasses.replace(CONFIG, scan_layers=True, remat=True, num_layers=3)
  losses_r, _, params_r, _, _, _ = _fsdp_run(None, config=scanned, num_steps=3)
  losses_f, _, params_f, _, _, specs = _fsdp_run(256, config=scanned, num_steps=3)
  assert any(parallel.sharded_dim(s) == 1 for s in specs)  # [layers, ...] split inside a layer
  np.testing.assert_allclose(losses_f, losses_r, rtol=1e-4)
  chex.assert_trees_all_close(params_f, params_r, atol=1e-3)

  wide = dataclasses.replace(scanned, width=128, mlp_dim=512, num_layers=4)
  model, tx, mesh = DiffusionLM(wide), optax.adamw(1e-2), parallel.make_mesh(4, fsdp=4)
  shapes, specs = _state_layout(model, tx, mesh, 256, abstract=True)
  step = steps.make_train_step(model, tx, schedules.get_schedule("cosine"), diffusion.LossConfig(),
                               mesh, global_batch=8, ema_decay=0.99, state_specs=specs)
  state = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                       shapes, parallel.shardings(mesh, specs))
  batch = jax.ShapeDtypeStruct((8, 8), np.int32, sharding=parallel.batch_sharding(mesh))
  mask = jax.ShapeDtypeStruct((8, 8), np.bool_, sharding=parallel.batch_sharding(mesh))
  memory = step.lower(state, batch, mask).compile().memory_analysis()
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes.params))
  assert memory.temp_size_in_bytes < param_bytes


def test_mesh_spec_follows_the_logical_rules():
  P = jax.sharding.PartitionSpec
  sizes = {"data": 2, "fsdp": 4}
  spec = lambda names, shape, min_size=1: parallel.mesh_spec(P(*names), shape, sizes, min_size)
  assert spec(("embed", "mlp"), (32, 64)) == P("fsdp", None)       # the first named dimension
  assert spec(("embed", "mlp"), (6, 64)) == P(None, "fsdp")        # ... that the axis divides
  assert spec(("latent", "embed"), (8, 32)) == P(None, "fsdp")     # latent: never split
  assert spec(("layers", "heads", "embed"), (3, 32, 32)) == P(None, "fsdp", None)
  assert spec(("vocab", "latent"), (40, 8)) == P("fsdp", None)
  assert spec(("latent", "length"), (8, 32)) == P()                # no rule splits these
  assert spec(("embed", "mlp"), (6, 10)) == P()                    # nothing divides
  assert spec(("embed", "mlp"), (32, 64), 10**6) == P()            # too small to shard
  assert spec((), (32, 64)) == P()                                 # declared without names
  assert parallel.mesh_spec(P("embed"), (32,), {"data": 4, "fsdp": 1}, 1) == P()  # no FSDP axis


def test_every_parameter_carries_logical_axis_names():
  """Every parameter of the diffusion LM (unrolled and scanned) and of the judge LM names each of
  its dimensions with a name the rules know; a scanned stack's leading axis is 'layers'."""
  known = {name for name, _ in parallel.RULES}
  for model, args in ((DiffusionLM(CONFIG), (jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,)))),
                      (DiffusionLM(dataclasses.replace(CONFIG, scan_layers=True)),
                       (jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,)))),
                      (TransformerLM(CONFIG), (jnp.zeros((2, 8), jnp.int32),))):
    shapes, names = partitioning.logical_specs(lambda: model.init(jax.random.PRNGKey(0), *args))
    for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(shapes), jax.tree.leaves(
        names, is_leaf=lambda n: isinstance(n, jax.sharding.PartitionSpec))):
      assert len(spec) == x.ndim and set(spec) <= known, (jax.tree_util.keystr(path), spec)
      if "layers" in jax.tree_util.keystr(path):
        assert spec[0] == "layers"
    # and initialization outside `logical_specs` returns plain arrays
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(
        model.init(jax.random.PRNGKey(0), *args)))


def test_make_mesh_groups_devices_into_fsdp_rows():
  assert dict(parallel.make_mesh(4).shape) == {"data": 4, "fsdp": 1}
  assert dict(parallel.make_mesh(4, fsdp=2).shape) == {"data": 2, "fsdp": 2}
  assert dict(parallel.make_mesh(4, fsdp=0).shape) == {"data": 1, "fsdp": 4}
  mesh = parallel.make_mesh(4, fsdp=2)
  assert [d.id for d in mesh.devices[0]] == [0, 1]  # a group: consecutive devices of one process
  with pytest.raises(ValueError, match="does not divide"):
    parallel.make_mesh(4, fsdp=3)
