import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cdm_jax import diffusion, generate, parallel, samplers, schedules, steps
from cdm_jax.models import DiffusionLM, ModelConfig

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


def test_four_devices_match_one_device():
  state1, losses1, _ = run_steps(1)
  state4, losses4, _ = run_steps(4)
  assert int(state1.step) == int(state4.step) == 3
  np.testing.assert_allclose(losses1, losses4, rtol=1e-4)
  chex.assert_trees_all_close(state1.params, state4.params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state1.ema_params, state4.ema_params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(state1.warp, state4.warp, rtol=1e-4, atol=1e-5)


def test_train_step_compiles_once():
  _, _, step = run_steps(2, num_steps=4)
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_several_steps_per_dispatch_match_single_steps():
  state1, _, _ = run_steps(2, num_steps=4)
  state_scan, _, _ = run_steps(2, num_steps=4, steps_per_call=2)
  assert int(state_scan.step) == 4
  chex.assert_trees_all_close(state1.params, state_scan.params, rtol=1e-4, atol=1e-5)


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match="not divisible"):
    steps.make_train_step(DiffusionLM(CONFIG), optax.sgd(0.1), schedules.get_schedule("cosine"),
                          diffusion.LossConfig(), parallel.make_mesh(4), global_batch=6, ema_decay=0.9)


def test_sample_fn_same_tokens_on_any_device_count_and_compiles_once():
  model = DiffusionLM(CONFIG)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,)))
  sched = schedules.get_schedule("cosine")
  outs = []
  for num_devices in (1, 2, 4):
    fn = generate.make_sample_fn(model, sched, parallel.make_mesh(num_devices), samplers.SampleConfig(
        num_samples=6, num_steps=5, sampler="ddpm", clamp="soft"))
    outs.append(np.asarray(fn(params, jax.random.PRNGKey(7))))
  assert outs[0].shape == (6, 8)
  for out in outs[1:]:
    np.testing.assert_array_equal(out, outs[0])
  fn = generate.make_sample_fn(model, sched, parallel.make_mesh(2),
                               samplers.SampleConfig(num_samples=4, num_steps=5))
  seeds = [np.asarray(fn(params, jax.random.PRNGKey(seed))) for seed in range(3)]
  assert fn._cache_size() == 1  # pylint: disable=protected-access
  assert not np.array_equal(seeds[0], seeds[1])  # the key is an argument, not a constant


def _fsdp_run(min_size, num_steps=5):
  """`num_steps` AdamW steps (clipped at 1.0, so the FSDP path clips by the global norm) on 4
  devices; (losses, final params on the host, state bytes on one device, specs of the params)."""
  model = DiffusionLM(CONFIG)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32), jnp.zeros((2,)))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, eps=1e-3))
  mesh = parallel.make_mesh(4)
  step = steps.make_train_step(model, tx, schedules.get_schedule("cosine"),
                               diffusion.LossConfig(time_warp=True), mesh, global_batch=8,
                               ema_decay=0.99, fsdp_min_size=min_size, grad_clip_norm=1.0)
  state = steps.init_train_state(params, tx, jax.random.PRNGKey(1))
  state = jax.device_put(state, parallel.state_shardings(state, mesh, min_size))
  per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
  data = np.random.default_rng(0).integers(0, 40, (num_steps, 8, 8)).astype(np.int32)
  losses, norms = [], []
  for batch in data:
    state, metrics = step(state, parallel.shard_batch(batch, mesh),
                          parallel.shard_batch(batch > 0, mesh))
    losses.append(float(metrics["loss"]))
    norms.append(float(metrics["grad_norm"]))
  specs = [x.sharding.spec for x in jax.tree.leaves(state.params)]
  return losses, norms, jax.device_get(state.params), per_device, specs


def test_fsdp_matches_replicated_with_a_quarter_of_the_state_per_device():
  losses_r, norms_r, params_r, bytes_r, _ = _fsdp_run(None)
  losses_f, norms_f, params_f, bytes_f, specs = _fsdp_run(256)
  assert any(parallel.sharded_dim(s) is not None for s in specs)
  assert any(parallel.sharded_dim(s) is None for s in specs)  # biases, norms stay whole
  np.testing.assert_allclose(losses_f, losses_r, rtol=1e-4)
  np.testing.assert_allclose(norms_f, norms_r, rtol=1e-4)
  assert max(norms_r) > 1.0  # clipping acted, by the global norm in the FSDP step
  chex.assert_trees_all_close(params_f, params_r, atol=1e-3)
  # The unshardable rest: every leaf that stays replicated under the FSDP rule.
  state_shapes = jax.eval_shape(lambda: steps.init_train_state(
      DiffusionLM(CONFIG).init(jax.random.PRNGKey(0), jnp.zeros((2, 8), jnp.int32),
                               jnp.zeros((2,))), optax.adamw(1e-2), jax.random.PRNGKey(1)))
  rest = sum(x.size * x.dtype.itemsize for x, s in zip(
      jax.tree.leaves(state_shapes),
      jax.tree.leaves(parallel.state_specs(state_shapes, 4, 256),
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
      if parallel.sharded_dim(s) is None)
  assert bytes_f <= bytes_r / 4 + rest and bytes_f < 0.4 * bytes_r


def test_fsdp_spec_picks_the_largest_divisible_dimension():
  P = jax.sharding.PartitionSpec
  assert parallel.fsdp_spec((64, 256), 4, 1) == P(None, "data")
  assert parallel.fsdp_spec((256, 6), 4, 1) == P("data")
  assert parallel.fsdp_spec((6, 10), 4, 1) == P()            # nothing divides
  assert parallel.fsdp_spec((64, 256), 4, 10**6) == P()      # too small to shard
  assert parallel.fsdp_spec((64, 256), 1, 1) == P()          # one device
