"""Data parallelism: a 1-D ('data',) mesh, batch sharding, and the sharded train and sample steps.

Per-device code runs under `jax.shard_map` inside `jax.jit` (pmap's semantics, current API).
Parameters are replicated, batches are split on their leading axis, gradients are `pmean`ed.
All per-example randomness is derived from the *global* example index, so results do not depend
on how many devices share the batch.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from cdm_jax import diffusion, samplers, schedules as schedules_lib

Array = jax.Array
AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"Asked for {num_devices} devices, only {len(devices)} are visible.")
    devices = devices[:num_devices]
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


@flax.struct.dataclass
class TrainState:
  step: Array                       # scalar int32
  params: Any
  opt_state: Any
  ema_params: Any
  rng: Array                        # raw uint32 key [2]; step keys are fold_in(rng, step)
  warp: schedules_lib.TimeWarp      # learned time warping (updated only when enabled)


def init_train_state(params, tx: optax.GradientTransformation, rng: Array,
                     warp_bins: int = 100) -> TrainState:
  """Step 0 state; EMA parameters are separate buffers (the state is donated each step)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params), rng=rng,
                    warp=schedules_lib.init_time_warp(warp_bins))


def ema_decay_at(step, decay: float):
  """Warmed-up EMA decay min(decay, (1 + step) / (10 + step)): the random init fades quickly."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def reduce_metrics(stacked: dict) -> dict:
  """Collapses a leading axis of per-step metrics: sums, except the first non-finite step (min)."""
  return {k: (jnp.min(v, axis=0) if k == "first_nonfinite_step" else jnp.sum(v, axis=0))
          for k, v in stacked.items()}


def merge_metrics(total: dict | None, new: dict) -> dict:
  """Accumulates step metrics on device (no host sync); same rule as `reduce_metrics`."""
  if total is None:
    return new
  return {k: (jnp.minimum(total[k], v) if k == "first_nonfinite_step" else total[k] + v)
          for k, v in new.items()}


def make_train_step(model, tx: optax.GradientTransformation, schedule: schedules_lib.Schedule,
                    loss_config: diffusion.LossConfig, mesh, global_batch: int, ema_decay: float,
                    steps_per_call: int = 1) -> Callable:
  """Returns jit(step)(state, tokens, mask) -> (state, metrics); state is donated.

  With `steps_per_call = k`, tokens/mask are [k, global_batch, length] and k optimizer steps run in
  one dispatch (`lax.scan`); metrics are summed over them.
  """
  cfg = model.config
  num_devices = mesh.devices.size
  if global_batch % num_devices:
    raise ValueError(f"Global batch {global_batch} is not divisible by {num_devices} devices.")
  local_batch = global_batch // num_devices

  def one_step(state: TrainState, batch):
    tokens, mask = batch  # [local_batch, length]
    length = tokens.shape[-1]
    step_key = jax.random.fold_in(state.rng, state.step)
    device = jax.lax.axis_index(AXIS)
    example_index = device * local_batch + jnp.arange(local_batch)
    u0 = jax.random.uniform(jax.random.fold_in(step_key, 0))
    warp = state.warp if loss_config.time_warp else None
    t, weight = diffusion.sample_times(u0, example_index, global_batch, warp)
    noise_key = jax.random.fold_in(step_key, 1)
    noise = jax.vmap(lambda i: jax.random.normal(
        jax.random.fold_in(noise_key, i), (2, length, cfg.embed_dim)))(example_index)
    noise = jnp.swapaxes(noise, 0, 1)  # [2, local_batch, length, dim]
    self_cond = jax.random.uniform(jax.random.fold_in(step_key, 2)) < loss_config.self_cond_prob
    rngs = {"dropout": jax.random.fold_in(jax.random.fold_in(step_key, 3), device)}

    def loss_fn(params):
      loss_sum, aux = diffusion.training_losses(
          model, params, tokens, mask, t, weight, noise, self_cond, schedule, loss_config, rngs)
      return loss_sum / (local_batch * length), aux

    grads, (metrics, per_example_loss) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new_warp = state.warp
    if loss_config.time_warp:
      all_t = jax.lax.all_gather(t, AXIS, tiled=True)
      all_loss = jax.lax.all_gather(per_example_loss, AXIS, tiled=True)
      new_warp = state.warp.update(all_t, all_loss)
    metrics = jax.lax.psum(metrics, AXIS)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["steps"] = jnp.ones((), jnp.float32)
    metrics["first_nonfinite_step"] = jnp.where(
        jnp.isfinite(metrics["loss"]), jnp.inf, state.step.astype(jnp.float32))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_params, warp=new_warp)
    return new_state, metrics

  def per_device(state, tokens, mask):
    if steps_per_call == 1:
      return one_step(state, (tokens, mask))
    state, metrics = jax.lax.scan(one_step, state, (tokens, mask))
    return state, reduce_metrics(metrics)

  batch_spec = P(AXIS) if steps_per_call == 1 else P(None, AXIS)
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), batch_spec, batch_spec),
                          out_specs=(P(), P()), check_vma=False)
  return jax.jit(sharded, donate_argnums=(0,))


def example_keys(rng: Array, num_examples: int) -> Array:
  """One raw key per example [num_examples, 2], independent of the device layout."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num_examples))


def make_sample_fn(model, schedule: schedules_lib.Schedule, mesh, num_samples: int, num_steps: int,
                   sampler: str = "ddim", clamp: str = "none", decoder: str = "readout",
                   clamp_temperature: float = 1.0, times: Array | None = None,
                   clamp_max_t: float = 1.0) -> Callable:
  """Returns a jit-compiled pure `(params, rng) -> tokens [num_samples, length]`.

  Samples are split over the mesh; each example's randomness comes from `fold_in(rng, index)`,
  so the same seed gives the same text on any number of devices.
  """
  cfg = model.config
  num_devices = mesh.devices.size
  padded = -(-num_samples // num_devices) * num_devices
  shape = (cfg.seq_len, cfg.embed_dim)

  def per_device(params, keys):
    table, bias = model.apply(params, method="readout_weights")
    # The clamp's vocabulary matmul follows the model's matmul precision; the final decode is exact.
    clamp_fn = samplers.make_clamp_fn(clamp, table, bias, decoder, clamp_temperature,
                                      cfg.matmul_operand_dtype)
    x_init = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(keys)
    loop_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

    def denoise_fn(x_t, t, x0_selfcond):
      return model.apply(params, x_t, schedule.log_snr(t), x0_selfcond, method="denoise").x0_hat

    x0_hat = samplers.sample_loop(denoise_fn, x_init, loop_keys, schedule, num_steps, sampler,
                                  clamp_fn, times, clamp_max_t)
    return samplers.decode(x0_hat, table, bias, decoder)

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS),
                          check_vma=False)

  @jax.jit
  def sample_fn(params, rng):
    return sharded(params, example_keys(rng, padded))[:num_samples]

  return sample_fn
