"""Progressive distillation (Salimans & Ho 2022) of a trained workdir into few-step samplers.

Round r distils the deterministic DDIM sampler with `2N` steps (the teacher: the trained model in
the first round, the previous round's student after it) into a student with `N` steps that starts
as a copy of its teacher. The student's step from time t = grid[2i] must land where the teacher's
two steps t -> t' -> t'' land; its target is the x0 estimate whose single DDIM step from z_t
reaches the teacher's z_t'':

    x_target = (z_t'' - (sigma_t'' / sigma_t) z_t) / (gamma_t'' - (sigma_t'' / sigma_t) gamma_t),

and the loss is the "truncated SNR" weighted MSE max(SNR_t, 1) ||x0_student - x_target||^2 (here
with SNR_t capped at `SNR_CAP`). The sampler's last call, the denoising at t_min, is trained too
(its target: the teacher's own final estimate). Each round halves the step count, from
`teacher_steps` down to `target_steps`.

Where the points come from: Salimans & Ho noise training data forward, z_t = gamma_t x0 +
sigma_t eps. Here that taught the student the teacher's steps on data-like states but not on the
states its own sampling visits (its 8 steps ended farther from the teacher's 16 than the
teacher's own 8; `experiments/results/distill.md`), so every point lies on a teacher run from noise,
as the sampler runs it: each state with the self-conditioning input the sampler gives it (the
previous step's estimate), and all N + 1 points of a run are trained at once. Known positions
(prefix, infilling, seq2seq source) are drawn from corpus rows by the model's condition mixture
and carry their clean latents in teacher and student alike, and never enter the loss, so
conditional sampling keeps working. The embedding table and read-out stay the teacher's.

Every student is written beside the teacher, `WORKDIR/students/steps_N/` (parameters and
`student.json`); `cdm_jax.load(WORKDIR, student=N)` samples it with `N` DDIM steps. The run is
resumable (`WORKDIR/distill/checkpoints`, like training's) and stops cleanly on SIGTERM.

`cdm-distill --workdir=DIR [--teacher_steps=16 --target_steps=1 --steps_per_round=300]` runs it.
"""

import dataclasses
import math

import flax
import jax
import jax.numpy as jnp
import optax

from cdm_jax.core import conditioning, diffusion
from cdm_jax.models import builders, partitioning
from cdm_jax.training import flops
from cdm_jax.runtime import parallel
from cdm_jax.runtime import registry
from cdm_jax.core import samplers
from cdm_jax.core import schedules as schedules_lib
from cdm_jax.core.parameterization import expand_like as _b

Array = jax.Array
SNR_CAP = 100.0      # the truncated-SNR weight max(SNR, 1) is capped here (the t_min point's SNR
                     # would otherwise outweigh every other one by orders of magnitude)
DISTILL_DIR = "distill"
FROZEN = "embedder"  # the module whose parameters (table, read-out bias) the student keeps as given


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """A distillation run's settings (saved as `WORKDIR/distill/distill.json`)."""
  target_steps: int = 8
  teacher_steps: int = 16        # the first teacher's DDIM steps: target_steps * 2^rounds (rounds
                                 # from more steps added error here: experiments/results/distill.md)
  steps_per_round: int = 300     # optimizer steps per halving
  learning_rate: float = 3e-4    # Adam, decayed linearly to 0 within each round
  runs_per_step: int = 8         # teacher runs from noise per step (N + 1 training points each)
  checkpoint_every_steps: int = 100
  log_every_steps: int = 25
  seed: int = 0

  def __post_init__(self):
    for name in ("target_steps", "teacher_steps", "steps_per_round", "runs_per_step"):
      if not getattr(self, name) >= 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    ratio = self.teacher_steps // self.target_steps
    if self.teacher_steps <= self.target_steps or self.teacher_steps % self.target_steps or (
        ratio & (ratio - 1)):
      raise ValueError(f"teacher_steps must be target_steps times a power of two (>= 2), got "
                       f"{self.teacher_steps} and {self.target_steps}.")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")

  @property
  def num_rounds(self) -> int:
    return int(round(math.log2(self.teacher_steps // self.target_steps)))

  @property
  def total_steps(self) -> int:
    return self.num_rounds * self.steps_per_round

  def student_steps(self, round_index: int) -> int:
    """The step count of round `round_index`'s student (its teacher has twice as many)."""
    return self.teacher_steps // 2 ** (round_index + 1)

  @classmethod
  def from_dict(cls, values: dict) -> "DistillConfig":
    return registry.dataclass_from_dict(cls, values, "distill config")


@flax.struct.dataclass
class DistillState:
  step: Array          # scalar int32: optimizer steps over all rounds
  params: object       # the student
  teacher: object      # this round's teacher (the previous round's student)
  opt_state: object
  rng: Array


def student_target(x_t: Array, x_u: Array, alpha_sigma_t, alpha_sigma_u) -> Array:
  """The x0 estimate whose DDIM step from x_t (time t) lands exactly on x_u (time u < t)."""
  (gamma_t, sigma_t), (gamma_u, sigma_u) = alpha_sigma_t, alpha_sigma_u
  ratio = sigma_u / sigma_t
  return (x_u - _b(ratio, x_t) * x_t) / _b(gamma_u - ratio * gamma_t, x_t)


def teacher_trajectory(teacher_fn, x_init: Array, grid: Array, schedule):
  """The teacher's DDIM sampling run from `x_init` over `grid` [2N + 1], as the sampler runs it
  (each step's self-conditioning input is the previous step's estimate): (states [2N + 1, batch,
  length, dim], their self-conditioning inputs, like states, the final estimate at grid[-1])."""
  batch, length = x_init.shape[:2]
  at = lambda j: schedule.position_times(jnp.full((batch,), grid[j]), length)

  def body(carry, j):
    x, x0_selfcond = carry
    x0_hat = teacher_fn(x, at(j), x0_selfcond)
    x_next = samplers.ddim_update(x, x0_hat, schedule.alpha_sigma(at(j + 1)),
                                  schedule.alpha_sigma(at(j)))
    return (x_next, x0_hat), (x, x0_selfcond)

  (x_last, selfcond_last), (xs, selfconds) = jax.lax.scan(
      body, (x_init, jnp.zeros_like(x_init)), jnp.arange(grid.shape[0] - 1))
  x0_final = teacher_fn(x_last, at(grid.shape[0] - 1), selfcond_last)
  return (jnp.concatenate([xs, x_last[None]]), jnp.concatenate([selfconds, selfcond_last[None]]),
          x0_final)


def trajectory_targets(teacher_fn, x_init: Array, grid: Array, schedule):
  """The student's training points along one teacher run per example: for its grid points
  i = 0..N (teacher points 2i), (states [N + 1, batch, length, dim], self-conditioning inputs,
  times [N + 1, batch] or [N + 1, batch, length], targets). Point i < N targets the estimate
  whose one DDIM step reaches the teacher's state 2i + 2; point N (the sampler's last call, at
  t_min) targets the teacher's own final estimate."""
  batch, length = x_init.shape[:2]
  states, selfconds, x0_final = teacher_trajectory(teacher_fn, x_init, grid, schedule)
  times = jax.vmap(lambda t: schedule.position_times(jnp.full((batch,), t), length))(grid[::2])
  steps = jax.vmap(lambda x_t, x_u, t, u: student_target(
      x_t, x_u, schedule.alpha_sigma(t), schedule.alpha_sigma(u)))(
          states[:-1:2], states[2::2], times[:-1], times[1:])
  targets = jnp.concatenate([steps, x0_final[None]])
  return states[::2], selfconds[::2], times, targets


def snr_weight(schedule, t: Array) -> Array:
  """min(max(SNR_t, 1), SNR_CAP): Salimans & Ho's truncated SNR weighting, capped."""
  gamma, sigma = schedule.alpha_sigma(t)
  return jnp.clip(gamma**2 / sigma**2, 1.0, SNR_CAP)


def _denoiser(model, params, schedule, condition: dict):
  """(x, t, x0_selfcond) -> x0_hat of `params` under `condition`, the denoiser's keywords (known
  positions' `cond` and `cond_mask`, or a source's `context`)."""
  def fn(x_t, t, x0_selfcond):
    return model.apply(params, x_t, schedule.log_snr(t), x0_selfcond, method="denoise",
                       **condition).x0_hat
  return fn


def distillation_losses(model, params, teacher, tokens: Array, grid: Array, *, key: Array,
                        schedule, condition: conditioning.ConditionConfig):
  """(weighted MSE over the unknown positions of every training point, metrics) for one global
  batch: one teacher run over `grid` (the teacher's decreasing times [2N + 1]) per row of `tokens`
  from noise `fold_in(key, row index)`, with known positions drawn from the row by the condition
  mixture; the student is trained at all N + 1 of its grid points of every run."""
  batch = tokens.shape[0]
  keys = parallel.example_keys(key, batch)
  known, null, kwargs = None, None, {}
  if condition.active:  # as in training: the mixture's known positions, the null condition's share
    known, null = jax.vmap(lambda k, row: conditioning.draw_condition(
        jax.random.fold_in(k, 2), row, condition))(keys, tokens)
  if model.config.source_context:  # the targets diffuse, their context rows (or null) in context
    source, tokens = conditioning.context_rows(tokens, known, model.config.context_layout)
    embed = lambda rows: model.apply(teacher, rows, method="embed")
    if known is None:
      known = jnp.zeros(tokens.shape, bool)
    kwargs = {"context": diffusion.context_latents(embed, source, known, null,
                                                   model.config.null_context)}
    known = None
  x0 = model.apply(teacher, tokens, method="embed")
  if known is not None:
    kwargs = {"cond": jnp.where(null[:, None, None], 0.0, x0), "cond_mask": known}
  x_init = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), x0.shape[1:]))(keys)
  teacher_fn = _denoiser(model, jax.lax.stop_gradient(teacher), schedule, kwargs)
  points = jax.lax.stop_gradient(trajectory_targets(teacher_fn, x_init, grid, schedule))
  flat = lambda a: a.reshape((-1,) + a.shape[2:])  # [N + 1, batch, ...] -> [(N + 1) batch, ...]
  x_t, selfcond, t, target = (flat(a) for a in points)
  copies = points[0].shape[0]
  repeat = lambda a: None if a is None else jnp.tile(a, (copies,) + (1,) * (a.ndim - 1))
  x0_student = _denoiser(model, params, schedule, {k: repeat(v) for k, v in kwargs.items()})(
      x_t, t, selfcond)
  per_position = (jnp.mean(jnp.square(x0_student - target), axis=-1)
                  * _per_position(snr_weight(schedule, t), x_t))
  loss_mask = (jnp.ones_like(per_position) if known is None
               else (~repeat(known)).astype(jnp.float32))
  loss = jnp.sum(per_position * loss_mask) / jnp.maximum(jnp.sum(loss_mask), 1.0)
  return loss, {"loss": loss}


def _per_position(values: Array, like: Array) -> Array:
  """[batch] or [batch, length] -> [batch, length] (like `like`'s first two axes)."""
  return jnp.broadcast_to(values[:, None] if values.ndim == 1 else values, like.shape[:2])


def _without_frozen(grads):
  """Zero gradients for the embedder's parameters: Adam then leaves them exactly as they are."""
  return jax.tree_util.tree_map_with_path(
      lambda path, g: jnp.zeros_like(g) if FROZEN in jax.tree_util.keystr(path) else g, grads)


def make_optimizer(config: DistillConfig) -> optax.GradientTransformation:
  """Adam, its learning rate decayed linearly to 0 over a round (the state restarts per round)."""
  schedule = optax.linear_schedule(config.learning_rate, 0.0, config.steps_per_round)
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def state_layout(config, model, tx, mesh, seed: int = 0):
  """(shapes, PartitionSpecs) of the distillation state on `mesh`: with the teacher config's
  train.fsdp the student, teacher and Adam moments are split over the mesh's 'fsdp' axis as the
  train state is (by the parameters' logical axis names), else replicated."""
  shapes, names = partitioning.logical_specs(
      lambda: init_state(builders.init_params(config, model), tx, seed))
  return shapes, parallel.state_specs(shapes, names, mesh, builders.fsdp_min_size(config))


def make_distill_step(model, schedule, tx: optax.GradientTransformation, mesh,
                      condition: conditioning.ConditionConfig, *, state_specs=None):
  """jit((state, tokens [global batch, length], teacher grid [2N + 1]) -> (state, metrics)); the
  state replicated, or split by `state_specs` (`state_layout`'s; XLA's partitioner gathers what
  each product needs), and donated; the batch split over the mesh's devices."""
  def step(state: DistillState, tokens, grid):
    key = jax.random.fold_in(state.rng, state.step)
    loss_fn = lambda params: distillation_losses(model, params, state.teacher, tokens, grid,
                                                 key=key, schedule=schedule, condition=condition)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = _without_frozen(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), metrics

  replicated = parallel.replicated(mesh)
  state = replicated if state_specs is None else parallel.shardings(mesh, state_specs)
  return jax.jit(step, in_shardings=(state, parallel.batch_sharding(mesh), replicated),
                 out_shardings=(state, replicated), donate_argnums=(0,))


def init_state(teacher_params, tx, seed: int) -> DistillState:
  """Round 0: the student is a copy of the teacher."""
  return DistillState(step=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, teacher_params),
                      teacher=teacher_params, opt_state=tx.init(teacher_params),
                      rng=jax.random.PRNGKey(seed))


def next_round(state: DistillState, tx) -> DistillState:
  """The finished student becomes the teacher, and a copy of it the new student (new optimizer)."""
  return state.replace(teacher=state.params, params=jax.tree.map(jnp.copy, state.params),
                       opt_state=tx.init(state.params))


def round_of(config: DistillConfig, step: int) -> int:
  """The round that optimizer step `step` (0-based) belongs to."""
  return min(step // config.steps_per_round, config.num_rounds - 1)


def teacher_grid(schedule, config: DistillConfig, round_index: int, warp=None,
                 follow: str = "loss") -> Array:
  """The teacher's DDIM grid of round `round_index` (uniform, or the learned warp's quantiles as
  `schedules.time_grid` gives them); its even points are the student's own grid."""
  return schedules_lib.time_grid(schedule, 2 * config.student_steps(round_index), warp, follow)


def uses_warp(teacher_config) -> bool:
  """Whether the teacher samples on its learned warp's grid, and so its students do too."""
  return teacher_config.sample.get("time_grid", "uniform") == "warp"


def flops_per_step(teacher_config, config: DistillConfig, round_index: int) -> float:
  """Analytic matmul FLOPs of one step of round `round_index`: per teacher run, 2N + 1 teacher
  forwards and the student's forward and backward (3 forwards) at its N + 1 points."""
  per_sequence = (flops.diffusion_train_flops(teacher_config)["denoiser_forward"]
                  / teacher_config.train.batch_size)
  n = config.student_steps(round_index)
  return config.runs_per_step * per_sequence * ((2 * n + 1) + 3 * (n + 1))


def flops_of_steps(teacher_config, config: DistillConfig, steps: int) -> float:
  """FLOPs of the first `steps` optimizer steps: each round's share at its own rate (the last
  round takes every step past the others, as `round_of` does)."""
  total = 0.0
  for r in range(config.num_rounds):
    start = r * config.steps_per_round
    end = steps if r == config.num_rounds - 1 else min(steps, start + config.steps_per_round)
    total += max(0, end - start) * flops_per_step(teacher_config, config, r)
  return total
