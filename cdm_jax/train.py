"""The training loop as a library function: `train_and_evaluate(config, workdir)`.

Resumes from the newest checkpoint in `workdir`; checkpoints params, optimizer state, EMA, step,
rng, time warp and the data position; saves on SIGTERM; stops at a non-finite loss naming the step.
"""

import json
import logging
import math
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from cdm_jax import (checkpointing, diffusion, embedding_stats, host, metric_writers, parallel,
                     schedules)
from cdm_jax.data import pipeline, tokenizer as tokenizer_lib
from cdm_jax.models import DiffusionLM, ModelConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  return ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": config.data.vocab_size,
                                "seq_len": config.data.seq_len})


def make_schedule(config: ml_collections.ConfigDict) -> schedules.Schedule:
  diff = config.diffusion
  kwargs = {"tan_d": {"d": diff.tan_d},
            "ve": {"sigma_min": diff.ve_sigma_min, "sigma_max": diff.ve_sigma_max}}
  schedule = schedules.get_schedule(diff.schedule, **kwargs.get(diff.schedule, {}))
  return schedules.with_position_skew(schedule, diff.get("position_skew", 0.0))  # older workdirs lack it


def loss_config(config: ml_collections.ConfigDict) -> diffusion.LossConfig:
  fields = ("rounding_weight", "anchor_weight", "mask_padding", "self_cond_prob", "time_warp",
            "importance_weight")
  return diffusion.LossConfig.from_dict({k: config.diffusion[k] for k in fields})


def make_optimizer(train_config) -> optax.GradientTransformation:
  total = max(train_config.num_train_steps, train_config.warmup_steps + 1)
  lr = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.learning_rate, warmup_steps=train_config.warmup_steps,
      decay_steps=total, end_value=0.1 * train_config.learning_rate)
  chain = [optax.clip_by_global_norm(train_config.grad_clip_norm)] if train_config.grad_clip_norm else []
  chain.append(optax.adamw(lr, b2=0.99, weight_decay=train_config.weight_decay))
  return optax.chain(*chain)


def init_state(config, model: DiffusionLM, tx) -> parallel.TrainState:
  init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
  cfg = model.config
  params = model.init(init_key, jnp.zeros((1, cfg.seq_len), jnp.int32), jnp.zeros((1,)))
  return parallel.init_train_state(params, tx, state_key, config.diffusion.warp_bins)


def abstract_state(config, model, tx, mesh):
  shapes = jax.eval_shape(lambda: init_state(config, model, tx))
  return checkpointing.abstract_like(shapes, parallel.replicated(mesh))


def make_eval_fn(model, schedule, mesh, log_snr_max: float | None = None):
  """jit((params, tokens [batch, length], rng) -> likelihood-bound sums)."""
  def bound(params, tokens, rng):
    batch = tokens.shape[0]
    keys = parallel.example_keys(rng, batch)
    t = schedules.low_discrepancy_uniform(jax.random.uniform(rng), jnp.arange(batch), batch)
    noise = jax.vmap(lambda k: jax.random.normal(k, (2,) + tokens.shape[1:] + (model.config.embed_dim,)))(keys)
    return diffusion.likelihood_bound(model, params, tokens, t, jnp.swapaxes(noise, 0, 1), schedule,
                                      log_snr_max)
  return jax.jit(bound, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh), None))


def bound_sums(eval_fn, params, valid: np.ndarray, batch_size: int, num_batches: int, seed: int,
               mesh) -> dict | None:
  """`eval_fn`'s sums over the first `num_batches` (0: all) whole valid batches, batch i drawn
  with key `seed + i`; None when there is no whole batch."""
  totals = None
  available = len(valid) // batch_size
  for i in range(min(num_batches, available) if num_batches else available):
    tokens = valid[i * batch_size:(i + 1) * batch_size]
    sums = eval_fn(params, parallel.shard_batch(tokens, mesh), jax.random.PRNGKey(seed + i))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return None if totals is None else jax.device_get(totals)


def evaluate_bound(eval_fn, params, valid: np.ndarray, batch_size: int, num_batches: int, seed: int,
                   mesh) -> dict:
  """Likelihood bound in nats and bits per position over the first `num_batches` valid batches."""
  totals = bound_sums(eval_fn, params, valid, batch_size, num_batches, seed, mesh)
  if totals is None:
    return {}
  per_pos = {k: float(v) / float(totals["positions"]) for k, v in totals.items() if k != "positions"}
  out = {f"valid_bound_{k}_nats": v for k, v in per_pos.items()}
  out["valid_bound_bits"] = diffusion.nats_to_bits(per_pos["total"])
  return out


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (then it checkpoints and returns)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM received: checkpointing and stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def write_samples(path: pathlib.Path, texts: list[str]):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(texts) + "\n", encoding="utf-8")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the diffusion LM in `workdir`; returns the last logged metrics."""
  host.tune_malloc()  # before any JAX call, or it cannot apply
  workdir_path = pathlib.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir_path / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2), encoding="utf-8")
  tcfg = config.train
  mesh = parallel.make_mesh(tcfg.num_devices or None)
  data = pipeline.prepare_data(config.data, workdir)
  model = DiffusionLM(model_config(config))
  schedule = make_schedule(config)
  tx = make_optimizer(tcfg)
  k = tcfg.steps_per_call
  train_step = parallel.make_train_step(model, tx, schedule, loss_config(config), mesh,
                                        tcfg.batch_size, tcfg.ema_decay, k)
  eval_fn = make_eval_fn(model, schedule, mesh, config.diffusion.bound_log_snr_max)
  stats_fn = jax.jit(lambda table, key: embedding_stats.embedding_statistics(
      table, schedule, key, t_small=tcfg.embedding_stats_t))
  batches = pipeline.BatchIterator(data.train, tcfg.batch_size, config.seed, jax.process_index(),
                                   jax.process_count())
  manager = checkpointing.make_manager(workdir, tcfg.keep_checkpoints)
  restored = checkpointing.restore_latest(manager, abstract_state(config, model, tx, mesh))
  if restored is None:
    state = jax.device_put(init_state(config, model, tx), parallel.replicated(mesh))
    log.info("Starting from scratch in %s.", workdir)
  else:
    state, data_state, start = restored
    batches.set_state(data_state)
    log.info("Resumed from step %d in %s.", start, workdir)
  step = int(jax.device_get(state.step))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  log.info("Model: %.2fM parameters; %d devices; global batch %d.", num_params / 1e6,
               mesh.devices.size, tcfg.batch_size)

  writer = metric_writers.MetricWriter(workdir)
  sample_fn = None
  accumulated, last_metrics = None, {}
  tokens_per_step = tcfg.batch_size * config.data.seq_len
  window_start, window_steps = time.perf_counter(), 0
  train_start = time.perf_counter()
  hit = lambda every: every and step % every == 0
  with _Preemption() as preemption, tqdm.tqdm(
      total=tcfg.num_train_steps, initial=step, disable=jax.process_index() != 0,
      dynamic_ncols=True, mininterval=5.0, desc="train") as bar:
    while step < tcfg.num_train_steps:
      host_batch = np.stack([next(batches) for _ in range(k)]) if k > 1 else next(batches)
      axis = 1 if k > 1 else 0
      state, metrics = train_step(state, parallel.shard_batch(host_batch, mesh, axis),
                                  parallel.shard_batch(host_batch != tokenizer_lib.PAD_ID, mesh, axis))
      accumulated = parallel.merge_metrics(accumulated, metrics)
      step += k
      window_steps += k
      bar.update(k)
      out_of_time = tcfg.time_limit_minutes and time.perf_counter() - train_start > 60 * tcfg.time_limit_minutes
      if out_of_time:
        log.warning("train.time_limit_minutes=%s reached at step %d: stopping.", tcfg.time_limit_minutes, step)
      last_step = (step >= tcfg.num_train_steps or preemption.requested or out_of_time
                   or (tcfg.stop_at_step and step >= tcfg.stop_at_step))

      if hit(tcfg.log_every_steps) or last_step:
        sums = jax.device_get(accumulated)
        accumulated = None
        if math.isfinite(sums["first_nonfinite_step"]):
          manager.wait_until_finished()
          raise FloatingPointError(
              f"Non-finite loss at step {int(sums['first_nonfinite_step'])}; training stopped "
              f"(last good checkpoint: {manager.latest_step()}). Lower train.learning_rate or check the data.")
        elapsed = time.perf_counter() - window_start
        sums = {key: float(value) for key, value in sums.items()}
        last_metrics = {
            "loss": sums["loss"] / sums["positions"],
            "diffusion_loss": sums["diffusion_loss"] / sums["tokens"],
            "token_accuracy": sums["token_accuracy"] / sums["accuracy_tokens"],
            "grad_norm": sums["grad_norm"] / sums["steps"],
            "tokens_per_second": tokens_per_step * window_steps / elapsed,
            "seconds_per_step": elapsed / window_steps,
        }
        for extra in ("rounding_loss", "anchor_loss"):
          if extra in sums:
            last_metrics[extra] = sums[extra] / sums["tokens"]
        table = model.apply(state.params, method="embeddings")
        last_metrics.update({k: float(v) for k, v in stats_fn(table, jax.random.PRNGKey(step)).items()})
        writer.write_scalars(step, last_metrics)
        bar.set_postfix(loss=f"{last_metrics['loss']:.4f}",
                        tok_s=f"{last_metrics['tokens_per_second']:.0f}")
        window_start, window_steps = time.perf_counter(), 0

      if (hit(tcfg.eval_every_steps) or last_step) and tcfg.eval_every_steps:
        eval_metrics = evaluate_bound(eval_fn, state.ema_params, data.valid, tcfg.batch_size,
                                      tcfg.num_eval_batches, config.seed, mesh)
        if eval_metrics:
          writer.write_scalars(step, eval_metrics)
          last_metrics.update(eval_metrics)

      if (hit(tcfg.sample_every_steps) or last_step) and tcfg.sample_every_steps:
        if sample_fn is None:
          scfg = config.sample
          sample_fn = parallel.make_sample_fn(model, schedule, mesh, scfg.num_samples, scfg.num_steps,
                                              scfg.sampler, scfg.clamp, scfg.decoder, scfg.clamp_temperature,
                                              clamp_max_t=scfg.clamp_max_t)
        tokens = jax.device_get(sample_fn(state.ema_params, jax.random.PRNGKey(config.seed)))
        texts = [tokenizer_lib.decode_tokens(data.tokenizer, row) for row in tokens]
        if jax.process_index() == 0:
          write_samples(workdir_path / "samples" / f"step_{step:08d}.txt", texts)
        writer.write_texts(step, "samples", texts)
        window_start = time.perf_counter()  # keep sampling time out of tokens/s

      if hit(tcfg.checkpoint_every_steps) or last_step:
        checkpointing.save(manager, step, state, batches.get_state(), force=last_step)
        window_start = time.perf_counter()
      if last_step:
        break

  manager.wait_until_finished()
  manager.close()
  writer.close()
  if jax.process_index() == 0:
    (workdir_path / "last_metrics.json").write_text(json.dumps({"step": step, **last_metrics}, indent=2))
  return {"step": step, **last_metrics}
