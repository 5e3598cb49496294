"""Progressive distillation as a training stage (`training.loop`): builds the run from a trained
workdir, restores or initializes the student, steps through the rounds, writes each round's student
beside the model (`sampling.artifacts`) and its metrics to WORKDIR/distill/metrics.jsonl. The math
and the compiled step are in `distill_step`, re-exported here."""

import contextlib
import dataclasses
import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from cdm_jax.data import batching, pipeline
from cdm_jax.models import builders
from cdm_jax.posttrain.distill_step import (  # noqa: F401  (flops_per_step, trajectory_targets:
    DISTILL_DIR, DistillConfig, DistillState, flops_of_steps, flops_per_step, init_state,  # re-exported)
    make_distill_step, make_optimizer, next_round, round_of, state_layout, teacher_grid,
    trajectory_targets, uses_warp)
from cdm_jax.runtime import checkpointing, distributed, fs, lock, parallel, periodic
from cdm_jax.sampling import artifacts
from cdm_jax.training import flops, loop

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Run:
  workdir: object
  config: DistillConfig
  teacher_config: object
  mesh: object
  model: object
  schedule: object
  tx: object
  step_fn: object
  batches: batching.BatchIterator
  manager: object
  teacher_step: int
  spec: loop.LoopSpec
  shardings: object = None  # of the DistillState: replicated, or split as the train state (FSDP)
  warp: object = None  # the teacher's learned time warp when it samples on its grid
  grids: list | None = None  # the teacher's grid of each round
  pending: list = dataclasses.field(default_factory=list)  # metrics since the last log
  record: dict = dataclasses.field(default_factory=dict)  # the last logged metrics

  # The stage interface of `training.loop`.
  def restore_or_init(self) -> DistillState:
    state = _restore_or_init(self)
    follow = self.teacher_config.diffusion.get("warp_follow", "loss")
    self.grids = [teacher_grid(self.schedule, self.config, r, self.warp, follow)
                  for r in range(self.config.num_rounds)]
    self.record = {"step": int(jax.device_get(state.step))}
    return state

  def dispatch(self, state: DistillState, step: int):
    tokens = parallel.shard_batch(next(self.batches), self.mesh)
    return self.step_fn(state, tokens, self.grids[round_of(self.config, step)])

  def after_step(self, state: DistillState, step: int, metrics: dict, last: bool):
    self.pending.append(metrics)
    round_done = self.checkpoint_due(step)
    if periodic.itstime(step, self.config.log_every_steps, round_done or last):
      self.record, self.pending = _log(self, step, jax.device_get(self.pending)), []
    if round_done:
      _save_student(self, state, round_of(self.config, step - 1), step)
      # The checkpoint starts the next round, also after the last one: a lower --target_steps
      # continues from there.
      state = jax.device_put(next_round(state, self.tx), self.shardings)
    return state

  def checkpoint_due(self, step: int) -> bool:
    return step % self.config.steps_per_round == 0

  def checkpoint_view(self, state):
    return state

  def paused(self):
    return contextlib.nullcontext()

  def close(self):
    pass


def _record_config(directory, config: DistillConfig):
  """Writes distill.json, or refuses a resume whose settings differ (other than how often it logs
  and checkpoints, and the target: a lower one continues with more rounds)."""
  path = directory / "distill.json"
  mutable = ("checkpoint_every_steps", "log_every_steps", "target_steps")
  new = dataclasses.asdict(config)
  if path.is_file():
    saved = json.loads(path.read_text())
    changed = {k: (saved.get(k), v) for k, v in new.items()
               if k not in mutable and saved.get(k) != v}
    if changed:
      raise ValueError(f"{directory} holds a distillation with other settings "
                       f"({', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}); keep "
                       f"them to resume, or move {directory} aside to start over.")
  directory.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(new, indent=2))


def _build(workdir: str, config: DistillConfig) -> _Run:
  teacher_config = builders.load_config(workdir)
  directory = fs.path(workdir) / DISTILL_DIR
  mesh = builders.make_mesh(teacher_config)  # FSDP groups as the teacher trained, if it did
  if config.runs_per_step % mesh.size:
    raise ValueError(f"runs_per_step ({config.runs_per_step}) must be a multiple of the "
                     f"{mesh.size} devices the runs are split over.")
  distributed.on_primary(lambda: _record_config(directory, config), "checking distill.json")
  model = builders.make_model(teacher_config)
  schedule = builders.make_schedule(teacher_config)
  tx = make_optimizer(config)
  data = pipeline.prepare_data(teacher_config.data, str(workdir))
  _, specs = state_layout(teacher_config, model, tx, mesh, config.seed)
  step_fn = make_distill_step(model, schedule, tx, mesh, builders.condition_config(teacher_config),
                              state_specs=specs)
  batches = batching.BatchIterator(data.train, config.runs_per_step, config.seed,
                                   jax.process_index(), jax.process_count(),
                                   shuffle_window=data.shuffle_window)
  return _Run(workdir=fs.path(workdir), config=config, teacher_config=teacher_config, mesh=mesh,
              model=model, schedule=schedule, tx=tx, step_fn=step_fn, batches=batches,
              manager=checkpointing.make_manager(str(directory), max_to_keep=2), teacher_step=0,
              shardings=parallel.shardings(mesh, specs),
              spec=loop.LoopSpec(total_steps=config.total_steps,
                                 checkpoint_every_steps=config.checkpoint_every_steps,
                                 desc="distill"))


def _restore_or_init(run: _Run) -> DistillState:
  extra = ({"warp": builders.abstract_warp(run.teacher_config, run.mesh)}
           if uses_warp(run.teacher_config) else {})
  teacher_file = run.workdir / DISTILL_DIR / "teacher.json"
  # A resumed distillation keeps the teacher checkpoint it started from, even if training has
  # written newer ones since (the students record it; `load(student=...)` warns when it is old).
  pinned = (json.loads(teacher_file.read_text())["teacher_checkpoint_step"]
            if teacher_file.is_file() and run.manager.latest_step() is not None else None)
  teacher, restored, run.teacher_step = artifacts.restore_model_params(
      run.teacher_config, str(run.workdir), run.mesh, step=pinned, extra=extra)
  distributed.on_primary(lambda: fs.write_atomic(teacher_file, json.dumps(
      {"teacher_checkpoint_step": run.teacher_step})), "writing distill/teacher.json")
  run.warp = distributed.to_host(restored["warp"]) if "warp" in restored else None
  shapes = jax.eval_shape(lambda: init_state(teacher, run.tx, run.config.seed))
  latest = checkpointing.restore_latest(run.manager, jax.tree.map(
      lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes,
      run.shardings))
  if latest is None:
    log.info("Distilling the step-%d teacher of %s from scratch.", run.teacher_step, run.workdir)
    return jax.device_put(init_state(teacher, run.tx, run.config.seed), run.shardings)
  state, data_state, step = latest
  run.batches.set_state(data_state)
  log.info("Resumed the distillation at step %d.", step)
  if step % run.config.steps_per_round == 0 and not _same(state.params, state.teacher):
    # saved at a round's end before the next one had begun
    state = jax.device_put(next_round(state, run.tx), run.shardings)
  return state


def _same(a, b) -> bool:
  return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _save_student(run: _Run, state: DistillState, round_index: int, step: int):
  steps = run.config.student_steps(round_index)
  path = artifacts.student_path(run.workdir, steps)
  checkpointing.save_tree(path / "params", state.params)
  distill_flops = flops_of_steps(run.teacher_config, run.config, step)
  teacher_flops = (flops.diffusion_train_flops(run.teacher_config)["train"] * run.teacher_step)
  meta = {"steps": steps, "teacher_steps": 2 * steps, "round": round_index + 1,
          "distill_steps": step, "teacher_runs": step * run.config.runs_per_step, "sampler": "ddim",
          "time_grid": "warp" if run.warp is not None else "uniform",
          "teacher_checkpoint_step": run.teacher_step, "distill_flops": distill_flops,
          "teacher_train_flops": teacher_flops,
          "flops_fraction_of_teacher_training": distill_flops / max(teacher_flops, 1.0),
          "distill": dataclasses.asdict(run.config)}
  distributed.on_primary(lambda: (path / "student.json").write_text(json.dumps(meta, indent=2)),
                         f"writing {path}/student.json")
  log.info("Round %d done: the %d-step student is in %s.", round_index + 1, steps, path)


def _log(run: _Run, step: int, metrics: list[dict]):
  means = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
  if not all(math.isfinite(v) for v in means.values()):
    raise FloatingPointError(f"Non-finite distillation loss by step {step}; lower --learning_rate "
                             f"(last checkpoint: {run.manager.latest_step()}).")
  record = {"step": step, "round": round_of(run.config, step - 1) + 1, **means}
  log.info("distill %s", record)
  if distributed.is_primary():
    fs.append_line(run.workdir / DISTILL_DIR / "metrics.jsonl", json.dumps(record))
  return record


def distill(workdir: str, config: DistillConfig) -> dict:
  """Distils the EMA parameters of `workdir`'s newest checkpoint (resuming an earlier run of the
  same settings); returns the last logged metrics. Students land in `WORKDIR/students/`."""
  with lock.workdir_lock(str(fs.path(workdir) / DISTILL_DIR), "distillation"):
    run = _build(workdir, config)
    loop.run(run)
  return run.record
