"""The training loop as a library function: `train_and_evaluate(config, workdir)`.

Resumes from the newest checkpoint in `workdir`; checkpoints params, optimizer state, EMA, step,
rng, time warp and the data position; saves on SIGTERM; stops at a non-finite loss naming the step.
The loop itself only steps and asks `periodic.itstime` whether to log, evaluate, sample or
checkpoint; each of those is one function below.
"""

import dataclasses
import json
import logging
import math

import jax
import ml_collections
import numpy as np
import tqdm
from etils import epath

from cdm_jax import (builders, checkpointing, conditioning, distributed, embedding_stats, fs,
                     generate, host, metric_writers, parallel, periodic, record, steps)
from cdm_jax.data import pipeline, tokenizer as tokenizer_lib

log = logging.getLogger(__name__)


def write_samples(path, texts: list[str]):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(texts) + "\n", encoding="utf-8")


@dataclasses.dataclass
class _Run:
  """Everything the loop's periodic actions use; built once per `train_and_evaluate`."""
  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: jax.sharding.Mesh
  data: pipeline.Dataset
  model: object
  schedule: object
  layout: tuple  # builders.state_layout: the train state's shapes and PartitionSpecs
  train_step: object
  bound_fn: object
  stats_fn: object
  batches: pipeline.BatchIterator
  manager: object
  writer: metric_writers.MetricWriter
  chrono: periodic.Chrono = dataclasses.field(default_factory=periodic.Chrono)
  sample_fn: object = None  # compiled on first use


def _build(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[_Run, object]:
  tcfg = config.train
  mesh = builders.make_mesh(config)
  data = pipeline.prepare_data(config.data, str(workdir))
  model = builders.make_model(config)
  schedule = builders.make_schedule(config)
  tx = builders.make_optimizer(tcfg)
  layout = builders.state_layout(config, model, tx, mesh)
  train_step = steps.make_train_step(model, tx, schedule, builders.loss_config(config), mesh,
                                     global_batch=tcfg.batch_size, ema_decay=tcfg.ema_decay,
                                     steps_per_call=tcfg.steps_per_call,
                                     skip_nonfinite=tcfg.get("skip_nonfinite", False),
                                     state_specs=layout[1],
                                     grad_clip_norm=tcfg.grad_clip_norm)
  stats_fn = jax.jit(lambda table, key: embedding_stats.embedding_statistics(
      table, schedule, key, t_small=tcfg.embedding_stats_t))
  run = _Run(config=config, workdir=workdir, mesh=mesh, data=data, model=model, schedule=schedule,
             layout=layout, train_step=train_step,
             bound_fn=steps.make_bound_fn(model, schedule, mesh, config.diffusion.bound_log_snr_max),
             stats_fn=stats_fn,
             batches=pipeline.BatchIterator(data.train, tcfg.batch_size, config.seed,
                                            jax.process_index(), jax.process_count()),
             manager=checkpointing.make_manager(str(workdir), tcfg.keep_checkpoints),
             writer=metric_writers.MetricWriter(str(workdir)))
  return run, tx


def _restore_or_init(run: _Run, tx):
  """The newest checkpoint's state (and data position), or a fresh state."""
  config = run.config
  restored = checkpointing.restore_latest(
      run.manager, builders.abstract_state(config, run.model, tx, run.mesh, layout=run.layout))
  if restored is None:
    log.info("Starting from scratch in %s.", run.workdir)
    state = builders.init_state(config, run.model, tx)
    return jax.device_put(state, parallel.shardings(run.mesh, run.layout[1]))
  state, data_state, start = restored
  run.batches.set_state(data_state)
  log.info("Resumed from step %d in %s.", start, run.workdir)
  return state


def _next_batch(run: _Run):
  """Sharded (tokens, mask) for one dispatch: [batch, length], or [k, batch, length]."""
  k = run.config.train.steps_per_call
  host_batch = np.stack([next(run.batches) for _ in range(k)]) if k > 1 else next(run.batches)
  axis = 1 if k > 1 else 0
  return (parallel.shard_batch(host_batch, run.mesh, axis),
          parallel.shard_batch(host_batch != tokenizer_lib.PAD_ID, run.mesh, axis))


def _log(run: _Run, state, step: int, accumulated: dict) -> dict:
  """Summarizes the interval's metric sums, adds throughput and embedding statistics, writes them;
  raises at a non-finite loss."""
  sums = jax.device_get(accumulated)
  if math.isfinite(sums["first_nonfinite_step"]):
    run.manager.wait_until_finished()
    raise FloatingPointError(
        f"Non-finite loss at step {int(sums['first_nonfinite_step'])}; training stopped "
        f"(last good checkpoint: {run.manager.latest_step()}). Lower train.learning_rate or check "
        "the data.")
  seconds, window_steps = run.chrono.window()
  tokens_per_step = run.config.train.batch_size * run.config.data.seq_len
  metrics = steps.summarize_metrics(sums)
  metrics.update(tokens_per_second=tokens_per_step * window_steps / seconds,
                 seconds_per_step=seconds / window_steps)
  table = run.model.apply(state.params, method="embeddings")
  metrics.update({k: float(v) for k, v in run.stats_fn(table, jax.random.PRNGKey(step)).items()})
  run.writer.write_scalars(step, metrics)
  return metrics


def _whole_ema(run: _Run, state):
  """The EMA parameters replicated on every device (gathered when train.fsdp shards them)."""
  return jax.device_put(state.ema_params, parallel.replicated(run.mesh))


def _evaluate(run: _Run, state, step: int) -> dict:
  tcfg = run.config.train
  metrics = steps.evaluate_bound(run.bound_fn, _whole_ema(run, state), run.data.valid,
                                 batch_size=tcfg.batch_size, num_batches=tcfg.num_eval_batches,
                                 seed=run.config.seed, mesh=run.mesh)
  if metrics:
    run.writer.write_scalars(step, metrics)
  return metrics


def _sample(run: _Run, state, step: int):
  """Writes samples: unconditional ones, or for a seq2seq corpus targets for the first held-out
  sources ("source => target")."""
  n = run.config.sample.num_samples
  seq2seq = run.data.is_seq2seq and len(run.data.valid) >= n
  if run.sample_fn is None:
    run.sample_fn = generate.make_sample_fn(run.model, run.schedule, run.mesh,
                                            builders.sample_config(run.config))
  key = jax.random.PRNGKey(run.config.seed)
  decode = lambda row: tokenizer_lib.decode_tokens(run.data.tokenizer, row)
  if seq2seq:
    rows = run.data.valid[:n]
    known = np.arange(rows.shape[1]) <= np.argmax(rows == tokenizer_lib.EOS_ID, axis=1)[:, None]
    tokens = distributed.to_host(run.sample_fn(_whole_ema(run, state), key, rows, known))
    texts = [f"{decode(row)} => {decode(conditioning.target_tokens(row))}" for row in tokens]
  else:
    texts = [decode(row) for row in distributed.to_host(run.sample_fn(_whole_ema(run, state), key))]
  if distributed.is_primary():
    write_samples(run.workdir / "samples" / f"step_{step:08d}.txt", texts)
  run.writer.write_texts(step, "samples", texts)


def _is_last_step(tcfg, step: int, preemption: periodic.Preemption, deadline: periodic.Deadline,
                  dispatch: int) -> bool:
  """Whether to stop after `step`. SIGTERM and the time limit reach each process on its own: with
  several processes they are pooled every `distributed.STOP_SYNC_DISPATCHES` dispatches of
  train.steps_per_call steps, and all stop at the same step."""
  timed_out = deadline.passed()
  if distributed.stop_requested(preemption.requested or timed_out, dispatch):
    log.warning("Stopping at step %d (%s).", step,
                "SIGTERM" if preemption.requested else
                f"train.time_limit_minutes={tcfg.time_limit_minutes} reached" if timed_out else
                "another process was asked to stop")
    return True
  return step >= tcfg.num_train_steps or bool(tcfg.stop_at_step and step >= tcfg.stop_at_step)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the diffusion LM in `workdir`; returns the last logged metrics."""
  host.tune_malloc()  # before any JAX call, or it cannot apply
  workdir_path = fs.path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  # On a resume this refuses a conflicting config before anything is written.
  distributed.on_primary(lambda: record.write_config(workdir_path, config), "checking config.json")
  run, tx = _build(config, workdir_path)
  try:
    step, metrics = _train_loop(run, _restore_or_init(run, tx))
  except BaseException:
    checkpointing.finish(run.manager, raise_errors=False)  # Orbax's threads stop before the exit
    run.writer.close()
    raise
  checkpointing.finish(run.manager)
  run.writer.close()
  if distributed.is_primary():
    (workdir_path / "last_metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2))
  return {"step": step, **metrics}


def _train_loop(run: _Run, state) -> tuple[int, dict]:
  """Steps from the restored `state` to the end (or a stop request); (last step, last metrics)."""
  tcfg = run.config.train
  step = int(jax.device_get(state.step))
  log.info("Model: %.2fM parameters; %d devices; global batch %d.",
           sum(x.size for x in jax.tree.leaves(state.params)) / 1e6, run.mesh.devices.size,
           tcfg.batch_size)
  deadline, accumulated, metrics = periodic.Deadline(tcfg.time_limit_minutes), None, {}
  dispatches = 0
  with periodic.Preemption() as preemption, tqdm.tqdm(
      total=tcfg.num_train_steps, initial=step, disable=not distributed.is_primary(),
      dynamic_ncols=True, mininterval=5.0, desc="train") as bar:
    while step < tcfg.num_train_steps:
      state, step_metrics = run.train_step(state, *_next_batch(run))
      accumulated = steps.merge_metrics(accumulated, step_metrics)
      step += tcfg.steps_per_call
      run.chrono.tick(tcfg.steps_per_call)
      bar.update(tcfg.steps_per_call)
      dispatches += 1
      last = _is_last_step(tcfg, step, preemption, deadline, dispatches)
      if periodic.itstime(step, tcfg.log_every_steps, last):
        metrics, accumulated = _log(run, state, step, accumulated), None
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_second']:.0f}")
      with run.chrono.paused():
        if tcfg.eval_every_steps and periodic.itstime(step, tcfg.eval_every_steps, last):
          metrics.update(_evaluate(run, state, step))
        if tcfg.sample_every_steps and periodic.itstime(step, tcfg.sample_every_steps, last):
          _sample(run, state, step)
        if periodic.itstime(step, tcfg.checkpoint_every_steps, last):
          checkpointing.save(run.manager, step, state, run.batches.get_state(), force=last)
      if last:
        break
  return step, metrics
