"""The compiled steps: the optimisation step (loss, pmean'd gradients, EMA, time-warp update,
non-finite tracking) and the likelihood-bound step, data-parallel over a `parallel` mesh.

Metrics leave a step as sums; `METRIC_DENOMINATORS` says what each is divided by, and
`summarize_metrics` does it once per log interval on the host.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from cdm_jax.core import conditioning
from cdm_jax.core import diffusion
from cdm_jax.runtime import distributed
from cdm_jax.runtime import parallel
from cdm_jax.core import schedules as schedules_lib
from cdm_jax.models import builders, diffusion_lm, partitioning
from cdm_jax.models.train_state import TrainState, init_train_state  # noqa: F401  (re-exported)

Array = jax.Array
BATCH = parallel.BATCH

# metric -> the summed count it is an average over
METRIC_DENOMINATORS = {**diffusion.METRIC_DENOMINATORS, "grad_norm": "steps"}
# a sum over every step of the interval (skipped ones included): the skipped steps' count
COUNTS = ("skipped_nonfinite",)


def ema_decay_at(step, decay: float):
  """Warmed-up EMA decay min(decay, (1 + step) / (10 + step)): the random init fades quickly."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def _ema_update(ema_params, params, decay, latent: bool):
  """decay * EMA + (1 - decay) * params; a latent model's frozen encoder is copied as it is."""
  def update(path, e, p):
    if latent and any(getattr(k, "key", None) == builders.FROZEN_ENCODER for k in path):
      return p
    return decay * e + (1.0 - decay) * p
  return jax.tree_util.tree_map_with_path(update, ema_params, params)


def merge_metrics(total: dict | None, new: dict) -> dict:
  """Accumulates step metrics (on device, no host sync): sums, except the first non-finite step,
  which is a minimum."""
  if total is None:
    return new
  return {k: (jnp.minimum(total[k], v) if k == "first_nonfinite_step" else total[k] + v)
          for k, v in new.items()}


def summarize_metrics(sums: dict) -> dict:
  """Host floats: every metric with a denominator divided by it (zero without any counted step),
  plus the `COUNTS`; other counts are dropped."""
  out = {key: float(sums[key]) / float(sums[denominator]) if float(sums[denominator]) else 0.0
         for key, denominator in METRIC_DENOMINATORS.items() if key in sums}
  out.update({key: float(sums[key]) for key in COUNTS if key in sums})
  return out


def _loss_inputs(state: TrainState, tokens, mask, loss_config: diffusion.LossConfig,
                 global_batch: int, latent_shape: tuple[int, int]) -> diffusion.LossInputs:
  """This device's share of the step's randomness, drawn per *global* example index; the noise
  has the encoder's `latent_shape` (m, d)."""
  local_batch = tokens.shape[0]
  step_key = jax.random.fold_in(state.rng, state.step)
  example_index = jax.lax.axis_index(BATCH) * local_batch + jnp.arange(local_batch)
  u0 = jax.random.uniform(jax.random.fold_in(step_key, 0))
  warp = state.warp if loss_config.time_warp else None
  t, weight = diffusion.sample_times(u0, example_index, global_batch, warp, loss_config.warp_follow)
  noise_key = jax.random.fold_in(step_key, 1)
  noise = jax.vmap(lambda i: jax.random.normal(
      jax.random.fold_in(noise_key, i), (2,) + latent_shape))(example_index)
  self_cond = jax.random.uniform(jax.random.fold_in(step_key, 2)) < loss_config.self_cond_prob
  known = null_cond = None
  if loss_config.condition.active:
    cond_key = jax.random.fold_in(step_key, 4)
    known, null_cond = jax.vmap(lambda i, row: conditioning.draw_condition(
        jax.random.fold_in(cond_key, i), row, loss_config.condition))(example_index, tokens)
  return diffusion.LossInputs(tokens=tokens, mask=mask, t=t, weight=weight,
                              noise=jnp.swapaxes(noise, 0, 1), self_cond=self_cond, known=known,
                              null_cond=null_cond)


def make_train_step(model, tx: optax.GradientTransformation, schedule: schedules_lib.Schedule,
                    loss_config: diffusion.LossConfig, mesh, *, global_batch: int,
                    ema_decay: float, steps_per_call: int = 1, skip_nonfinite: bool = False,
                    state_specs=None, grad_clip_norm: float = 0.0) -> Callable:
  """Returns jit(step)(state, tokens, mask) -> (state, metric sums); state is donated.

  With `steps_per_call = k`, tokens/mask are [k, global_batch, length] and k optimizer steps run in
  one dispatch (`lax.scan`); their metrics are merged. With `skip_nonfinite`, a step whose loss or
  gradient is not finite leaves parameters, optimizer state, EMA and warp as they were (the step
  counter still advances) and is counted in the `skipped_nonfinite` metric instead of stopping.

  With `state_specs` (`builders.state_specs`: the state sharded over the mesh's 'fsdp' axis), the
  step gathers the parameters, and clips gradients to `grad_clip_norm` by their global norm (a clip
  inside `tx` sees one slice; after this one it never acts). Results equal the replicated step's up
  to rounding. Without, the state is replicated.
  """
  num_devices = mesh.devices.size
  if global_batch % num_devices:
    raise ValueError(f"Global batch {global_batch} is not divisible by {num_devices} devices.")
  local_batch = global_batch // num_devices
  latent_shape = (model.config.latent_length, model.config.embed_dim)

  def one_step(state: TrainState, batch, specs):
    inputs = _loss_inputs(state, *batch, loss_config, global_batch, latent_shape)
    step_key = jax.random.fold_in(state.rng, state.step)
    rngs = {"dropout": jax.random.fold_in(jax.random.fold_in(step_key, 3), jax.lax.axis_index(BATCH))}
    loss_fn = _loss_fn(model, schedule, loss_config, inputs, param_specs=specs.params, rngs=rngs,
                       positions=local_batch * latent_shape[0])
    grads, (metrics, per_example_loss) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads, grad_norm = _mean_gradients(grads, specs.params, num_devices, grad_clip_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay)
    ema_params = _ema_update(state.ema_params, params, decay, model.config.is_latent)
    warp = state.warp
    if loss_config.time_warp:
      warp = warp.update(jax.lax.all_gather(inputs.t, BATCH, tiled=True),
                         jax.lax.all_gather(per_example_loss, BATCH, tiled=True))
    metrics = jax.lax.psum(metrics, BATCH)
    metrics.update(grad_norm=grad_norm, steps=jnp.ones((), jnp.float32))
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])  # on every device
    metrics["first_nonfinite_step"] = jnp.where(finite, jnp.inf, state.step.astype(jnp.float32))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema_params, warp=warp)
    return _keep_if_nonfinite(finite, new_state, state, metrics) if skip_nonfinite else (
        new_state, metrics)

  def per_device(specs, state, tokens, mask):
    if steps_per_call == 1:
      return one_step(state, (tokens, mask), specs)
    state, stacked = jax.lax.scan(lambda s, b: one_step(s, b, specs), state, (tokens, mask))
    metrics = None
    for i in range(steps_per_call):
      metrics = merge_metrics(metrics, jax.tree.map(lambda v: v[i], stacked))
    return state, metrics

  return _jit_over_mesh(per_device, mesh, steps_per_call, state_specs)


def _loss_fn(model, schedule, loss_config, inputs, *, param_specs, rngs, positions: int):
  """params -> (this device's mean loss, aux), computed on the gathered parameters (replicated
  leaves as they are; a scanned stack's layers gathered one at a time inside the scan). The
  gather's gradient is a reduce-scatter: sharded leaves get their slice of the gradient."""
  layers = diffusion_lm.SCANNED_LAYERS if model.config.scan_layers else None

  def loss_fn(params):
    whole, layer_fn = parallel.gather_params(params, param_specs, layers)
    with partitioning.gathering_layers(layer_fn):
      loss_sum, aux = diffusion.training_losses(model, whole, inputs, schedule, loss_config,
                                                rngs=rngs)
    return loss_sum / positions, aux
  return loss_fn


def _jit_over_mesh(per_device, mesh, steps_per_call: int, state_specs):
  """jit of `per_device(specs, state, tokens, mask)` under `shard_map`: the state split by
  `state_specs` (None: replicated), batches by rows, metrics replicated; the state is donated."""
  batch_spec = P(BATCH) if steps_per_call == 1 else P(None, BATCH)

  def sharded(state, tokens, mask):
    specs = jax.tree.map(lambda _: P(), state) if state_specs is None else state_specs
    return jax.shard_map(functools.partial(per_device, specs), mesh=mesh,
                         in_specs=(specs, batch_spec, batch_spec), out_specs=(specs, P()),
                         check_vma=False)(state, tokens, mask)
  return jax.jit(sharded, donate_argnums=(0,))


def _mean_gradients(grads, specs, num_devices: int, clip_norm: float):
  """(mean gradient over devices, its global norm before clipping). A sharded leaf arrives summed
  over its FSDP group (the reduce-scatter) and is summed over the groups here; a replicated one
  arrives per device (pmean); with sharded leaves the global norm is clipped to `clip_norm` (> 0)
  here."""
  is_spec = lambda x: isinstance(x, P)
  sharded = lambda spec: parallel.sharded_dim(spec) is not None
  grads = jax.tree.map(lambda g, spec: jax.lax.psum(g, parallel.DATA) / num_devices if sharded(spec)
                       else jax.lax.pmean(g, BATCH), grads, specs, is_leaf=is_spec)
  norm = parallel.global_norm(grads, specs)
  if clip_norm and any(sharded(s) for s in jax.tree.leaves(specs, is_leaf=is_spec)):
    scale = jnp.minimum(1.0, clip_norm / jnp.maximum(norm, 1e-12))
    grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
  return grads, norm


def _keep_if_nonfinite(finite, new_state: TrainState, state: TrainState, metrics: dict):
  """The new state if `finite`, else the old one one step later; a skipped step contributes zeros
  to every metric sum and one to `skipped_nonfinite`."""
  kept = state.replace(step=new_state.step)
  chosen = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new_state, kept)
  metrics = {k: jnp.where(finite, v, jnp.zeros_like(v)) for k, v in metrics.items()}
  metrics["first_nonfinite_step"] = jnp.asarray(jnp.inf, jnp.float32)
  metrics["skipped_nonfinite"] = jnp.where(finite, 0.0, 1.0).astype(jnp.float32)
  return chosen, metrics


def make_bound_fn(model, schedule: schedules_lib.Schedule, mesh, log_snr_max: float | None = None):
  """jit((params, tokens [batch, length], rng) -> likelihood-bound sums)."""
  def bound(params, tokens, rng):
    batch = tokens.shape[0]
    keys = parallel.example_keys(rng, batch)
    t = schedules_lib.low_discrepancy_uniform(jax.random.uniform(rng), jnp.arange(batch), batch)
    shape = (2, model.config.latent_length, model.config.embed_dim)
    noise = jax.vmap(lambda k: jax.random.normal(k, shape))(keys)
    return diffusion.likelihood_bound(model, params, tokens, t=t, noise=jnp.swapaxes(noise, 0, 1),
                                      schedule=schedule, log_snr_max=log_snr_max)
  return jax.jit(bound, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh), None))


def bound_sums(bound_fn, params, valid: np.ndarray, *, batch_size: int, num_batches: int,
               seed: int, mesh) -> dict | None:
  """`bound_fn`'s sums over the first `num_batches` (0: all) whole valid batches, batch i drawn
  with key `seed + i`; None when there is no whole batch."""
  totals = None
  available = len(valid) // batch_size
  for i in range(min(num_batches, available) if num_batches else available):
    tokens = valid[i * batch_size:(i + 1) * batch_size]
    sums = bound_fn(params, parallel.global_array(tokens, mesh), jax.random.PRNGKey(seed + i))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return None if totals is None else distributed.to_host(totals)


def evaluate_bound(bound_fn, params, valid: np.ndarray, *, batch_size: int, num_batches: int,
                   seed: int, mesh) -> dict:
  """Likelihood bound in nats and bits per position over the first `num_batches` valid batches."""
  totals = bound_sums(bound_fn, params, valid, batch_size=batch_size, num_batches=num_batches,
                      seed=seed, mesh=mesh)
  if totals is None:
    return {}
  per_pos = {k: float(v) / float(totals["positions"]) for k, v in totals.items() if k != "positions"}
  out = {f"valid_bound_{k}_nats": v for k, v in per_pos.items()}
  out["valid_bound_bits"] = diffusion.nats_to_bits(per_pos["total"])
  return out
