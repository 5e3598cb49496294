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
