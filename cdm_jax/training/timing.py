"""Timing helpers of the benchmarks: interleaved wall-clock timings (so that a machine's drift hits
every candidate alike), the in-process float32 matmul peak, and the compiled train step's time per
optimizer step on random tokens (`benchmarks/bench.py`, `benchmarks/xla_flags.py`)."""

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from cdm_jax.models import builders
from cdm_jax.runtime import parallel
from cdm_jax.training import steps


def interleaved_times(fns: dict, repeats: int) -> dict:
  """{name: [seconds per blocked call]} for argument-free callables, timed in turn `repeats`
  times after one warm-up call each: slow drift of a shared machine then hits all of them alike,
  and differences taken within one round cancel most of it."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return times


def timed(fn, *args, repeats: int):
  """Median seconds of `fn(*args)` (blocked) over `repeats` runs, after one warm-up call."""
  return float(np.median(interleaved_times({"fn": lambda: fn(*args)}, repeats)["fn"]))


def matmul_peak_gflops(size: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
  """GFLOP/s of one size^3 matmul with `dtype` operands (float32 accumulation and result)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size)).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size)).astype(dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  return 2 * size**3 / timed(f, a, b, repeats=repeats) / 1e9


def time_train_steps(config, num_steps: int):
  """Builds the config's sharded train step on random tokens and times it: (state, compile seconds,
  seconds per optimizer step for each of `num_steps` dispatches, minor page faults per optimizer
  step over those dispatches)."""
  model = builders.make_model(config)
  schedule = builders.make_schedule(config)
  tx = builders.make_model_optimizer(config)
  mesh = parallel.make_mesh()
  k = config.train.steps_per_call
  step_fn = steps.make_train_step(model, tx, schedule, builders.loss_config(config), mesh,
                                  global_batch=config.train.batch_size,
                                  ema_decay=config.train.ema_decay, steps_per_call=k)
  state = jax.device_put(builders.init_state(config, model, tx), parallel.replicated(mesh))
  shape = (config.train.batch_size, config.data.seq_len) if k == 1 else (k, config.train.batch_size,
                                                                          config.data.seq_len)
  tokens = np.random.default_rng(0).integers(4, config.data.vocab_size, shape).astype(np.int32)
  axis = 0 if k == 1 else 1
  batch = (parallel.shard_batch(tokens, mesh, axis), parallel.shard_batch(tokens > 0, mesh, axis))

  start = time.perf_counter()
  state, metrics = step_fn(state, *batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(num_steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, *batch)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - start) / k)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  return state, compile_s, times, faults / (num_steps * k)
