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
from etils import epath

from cdm_jax.models import builders
from cdm_jax.runtime import checkpointing
from cdm_jax.core import conditioning
from cdm_jax.runtime import distributed
from cdm_jax.core import embedding_stats
from cdm_jax.runtime import fs, lock
from cdm_jax import sampling
from cdm_jax.runtime import metric_writers
from cdm_jax.runtime import parallel
from cdm_jax.runtime import periodic
from cdm_jax.runtime import config_record as record
from cdm_jax.training import autoencoder, branch, checks, loop, steps
from cdm_jax.data import batching, pipeline, tokenizer as tokenizer_lib

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
  batches: batching.BatchIterator
  manager: object
  writer: metric_writers.MetricWriter
  tx: object
  spec: loop.LoopSpec
  encoder_params: dict | None = None  # a latent model's trained autoencoder (fresh starts use it)
  chrono: periodic.Chrono = dataclasses.field(default_factory=periodic.Chrono)
  sample_fn: object = None  # compiled on first use
  accumulated: dict | None = None  # the metric sums since the last log
  metrics: dict = dataclasses.field(default_factory=dict)  # the last logged metrics

  # The stage interface of `training.loop`.
  def restore_or_init(self):
    return _restore_or_init(self, self.tx)

  def dispatch(self, state, unused_step: int):
    return self.train_step(state, *_next_batch(self))

  def after_step(self, state, step: int, step_metrics: dict, last: bool):
    return _after_step(self, state, step, step_metrics, last)

  def checkpoint_due(self, step: int) -> bool:
    return step in self.config.train.get("keep_steps", ())

  def checkpoint_view(self, state):
    return builders.checkpoint_view(self.config, state)

  def paused(self):
    return self.chrono.paused()

  def close(self):
    self.writer.close()


def _build(config: ml_collections.ConfigDict, workdir: epath.Path) -> _Run | None:
  """The run; None when a latent model's autoencoder stage stopped before its end."""
  tcfg = config.train
  mesh = builders.make_mesh(config)
  data = pipeline.prepare_data(config.data, str(workdir))
  model = builders.make_model(config)
  schedule = builders.make_schedule(config)
  encoder_params = None
  if model.config.is_latent:
    trained = autoencoder.train(config, str(workdir), data, mesh)
    if trained is None:
      return None
    encoder_params = trained[0]
  tx = builders.make_model_optimizer(config)
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
             batches=batching.BatchIterator(data.train, tcfg.batch_size, config.seed,
                                            jax.process_index(), jax.process_count(),
                                            shuffle_window=data.shuffle_window),
             manager=checkpointing.make_manager(str(workdir), tcfg.keep_checkpoints,
                                                keep_steps=tuple(tcfg.get("keep_steps", ()))),
             writer=metric_writers.MetricWriter(str(workdir)), tx=tx,
             encoder_params=encoder_params,
             spec=loop.LoopSpec(total_steps=tcfg.num_train_steps,
                                checkpoint_every_steps=tcfg.checkpoint_every_steps,
                                steps_per_call=tcfg.steps_per_call,
                                time_limit_minutes=tcfg.time_limit_minutes,
                                stop_at_step=tcfg.stop_at_step or 0))
  return run


def _restore_or_init(run: _Run, tx):
  """The newest checkpoint's state (and data position), or a fresh state."""
  config = run.config
  abstract = builders.abstract_state(config, run.model, tx, run.mesh, layout=run.layout)
  encoder_keys = ("params", "params", builders.FROZEN_ENCODER)
  # A latent model's checkpoints leave its frozen encoder out (`builders.checkpoint_view`); those
  # written before that change hold it, and restore as they were saved.
  restored = checkpointing.restore_latest(run.manager, lambda step: (
      abstract if checkpointing.has_saved(run.manager.directory, step, encoder_keys)
      else builders.checkpoint_view(config, abstract)))
  if restored is None:
    log.info("Starting from scratch in %s (global batch %d on %d devices).", run.workdir,
             config.train.batch_size, run.mesh.devices.size)
    state = builders.init_state(config, run.model, tx, run.encoder_params)
    return jax.device_put(state, parallel.shardings(run.mesh, run.layout[1]))
  state, data_state, start = restored
  run.batches.set_state(data_state)
  log.info("Resumed from step %d in %s.", start, run.workdir)
  state = builders.with_frozen_encoder(config, state, run.encoder_params)
  return jax.device_put(state, parallel.shardings(run.mesh, run.layout[1]))


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
  if not run.model.config.is_latent:
    table = run.model.apply(state.params, method="embeddings")
    metrics.update({k: float(v) for k, v in run.stats_fn(table, jax.random.PRNGKey(step)).items()})
  run.writer.write_scalars(step, metrics)
  return metrics


def _after_step(run: _Run, state, step: int, step_metrics: dict, last: bool):
  """Accumulates the step's metric sums; logs, evaluates and samples when it is time."""
  tcfg = run.config.train
  run.chrono.tick(tcfg.steps_per_call)
  run.accumulated = steps.merge_metrics(run.accumulated, step_metrics)
  if periodic.itstime(step, tcfg.log_every_steps, last):
    run.metrics, run.accumulated = _log(run, state, step, run.accumulated), None
  with run.chrono.paused():
    if tcfg.eval_every_steps and periodic.itstime(step, tcfg.eval_every_steps, last):
      run.metrics.update(_evaluate(run, state, step))
    if tcfg.sample_every_steps and periodic.itstime(step, tcfg.sample_every_steps, last):
      _sample(run, state, step)
  return state


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
    run.sample_fn = sampling.make_sample_fn(run.model, run.schedule, run.mesh,
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the diffusion LM in `workdir`; returns the last logged metrics."""
  checks.check_train_config(config)  # before anything is read, written or compiled
  branch.check_branch(config)
  workdir_path = fs.path(workdir)
  with lock.workdir_lock(workdir, "training job"):
    # On a resume this refuses a conflicting config before anything is written.
    distributed.on_primary(lambda: record.write_config(workdir_path, config),
                           "checking config.json")
    distributed.on_primary(lambda: branch.prepare_branch(config, workdir), "copying the branch point")
    run = _build(config, workdir_path)
    if run is None:
      return {"step": 0, "stopped_in": "autoencoder"}
    _, step = loop.run(run)
  if distributed.is_primary():
    (workdir_path / "last_metrics.json").write_text(
        json.dumps({"step": step, **run.metrics}, indent=2))
  return {"step": step, **run.metrics}
