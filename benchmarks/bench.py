"""Speed benchmark: matmul peak, training step, sampling loop; prints a table and writes JSON.

  python benchmarks/bench.py --config=configs/bench_peer.py [--config=configs/wordnet.py ...]
      [--train_steps=10 --sample_batch=64 --out=benchmarks/results/bench.json]

Only shapes come from the config (random tokens, no corpus). Run on an idle machine: with two
cores, anything else running halves the figures. The matmul peak is measured in the same process
before and after the runs, and MFU is taken against the higher reading; the sampling figures are
medians over rounds of interleaved timings (`--repeats`), differenced within each round.
"""

import argparse
import functools
import json
import pathlib
import resource

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

from cdm_jax.models import builders
from cdm_jax.runtime import overrides as overrides_lib
from cdm_jax import sampling
from cdm_jax.runtime import allocator as host
from cdm_jax.runtime import parallel
from cdm_jax.core import rounding, samplers
from cdm_jax.training import flops as flops_lib  # pylint: disable=g-import-not-at-top
from cdm_jax.training.timing import interleaved_times, matmul_peak_gflops, time_train_steps, timed
from cdm_jax.runtime import config_files


def apply_sets(config, sets: list[str]):
  """Applies `a.b=value` overrides (value parsed as a Python literal when it is one)."""
  return overrides_lib.apply_to_config(config, overrides_lib.parse_settings(sets))


def bench_config(path: str, args) -> dict:
  config = apply_sets(config_files.load(path), args.set)
  config.train.steps_per_call = args.steps_per_call or config.train.steps_per_call
  state, compile_s, times, faults = time_train_steps(config, args.train_steps)
  step_s = float(np.median(times))
  flops = flops_lib.diffusion_train_flops(config)
  result = {
      "config": path, "overrides": args.set, "params_M": sum(x.size for x in jax.tree.leaves(state.params)) / 1e6,
      "train_step_s": step_s, "train_compile_s": compile_s, "train_page_faults": faults,
      "tokens_per_s": config.train.batch_size * config.data.seq_len / step_s,
      "train_model_gflop": flops["train"] / 1e9, "train_gflops": flops["train"] / step_s / 1e9,
      "matmul_dtype": config.model.matmul_dtype,
      "train_metric_gflop": flops["metric_readout"] / 1e9,
  }

  # Sampling: per-step time from two loop lengths (the difference cancels the loop's fixed costs),
  # with and without the clamp (the clamp's cost inside the loop), and one denoiser forward; all
  # timed round-robin and differenced within each round, then the median over rounds.
  params = state.ema_params
  model, schedule, mesh = builders.make_model(config), builders.make_schedule(config), parallel.make_mesh()
  batch_size = args.sample_batch
  sample_cfg = builders.sample_config(config)
  n = args.sample_steps
  x = jax.random.normal(jax.random.PRNGKey(0), (batch_size, config.data.seq_len, config.model.embed_dim))
  t = jnp.full((batch_size,), 0.5)
  forward = jax.jit(lambda p, x, t: model.apply(p, x, schedule.log_snr(t), x, method="denoise").x0_hat)
  calls = {"forward": lambda: forward(params, x, t)}
  for clamp in dict.fromkeys((sample_cfg.clamp, "none")):
    for num_steps in (n, 2 * n):
      fn = sampling.make_sample_fn(model, schedule, mesh, sample_cfg.replace(
          num_samples=batch_size, num_steps=num_steps, clamp=clamp))
      calls[clamp, num_steps] = functools.partial(fn, params, jax.random.PRNGKey(0))
  times = {k: np.asarray(v) for k, v in interleaved_times(calls, args.repeats).items()}
  step_rounds = (times[sample_cfg.clamp, 2 * n] - times[sample_cfg.clamp, n]) / n
  bare_rounds = (times["none", 2 * n] - times["none", n]) / n
  per_step = float(np.median(step_rounds))
  clamp_per_step = float(np.median(step_rounds - bare_rounds))
  forward_s = float(np.median(times["forward"]))
  table, bias = model.apply(params, method="readout_weights")
  clamp_fn = rounding.make_clamp_fn(sample_cfg.clamp, table, bias, decoder=sample_cfg.decoder,
                                    operand_dtype=model.config.matmul_operand_dtype)
  clamp_s = 0.0 if clamp_fn is None else timed(jax.jit(clamp_fn), x, repeats=args.repeats)
  decode_s = timed(jax.jit(lambda x: rounding.decode(x, table, bias, sample_cfg.decoder)), x,
                   repeats=args.repeats)
  # Vocabulary work per step: the clamp inside the loop plus the one decode after it, spread over
  # the default number of steps.
  vocab_per_step = clamp_per_step + decode_s / sample_cfg.num_steps
  evals = samplers.evaluations_per_step(sample_cfg.sampler)
  loop_s = float(np.median(times[sample_cfg.clamp, n]))
  bare_s = float(np.median(times["none", n]))
  ideal = (n * evals + 1) * forward_s
  result.update({
      "sample_batch": batch_size, "sampler": sample_cfg.sampler, "clamp": sample_cfg.clamp,
      "clamp_max_t": sample_cfg.clamp_max_t,
      "sample_step_s": per_step, "denoiser_forward_s": forward_s,
      "loop_s": loop_s, "loop_steps": n, "loop_overhead": (loop_s - ideal) / loop_s,
      "loop_machinery_share": (bare_s - ideal) / loop_s, "clamp_in_loop_s": clamp_per_step,
      "clamp_s": clamp_s, "decode_s": decode_s, "decode_clamp_share": vocab_per_step / per_step,
      "default_steps": sample_cfg.num_steps,
      "time_to_64_samples_s": per_step * sample_cfg.num_steps * 64 / batch_size,
      "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
  })
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", action="append", help="config file(s); default: peer + wordnet")
  parser.add_argument("--train_steps", type=int, default=8)
  parser.add_argument("--steps_per_call", type=int, default=0, help="override train.steps_per_call")
  parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
  parser.add_argument("--sample_batch", type=int, default=64)
  parser.add_argument("--sample_steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5, help="timing rounds for sampling")
  parser.add_argument("--peak_size", type=int, default=2048,
                      help="n of the n^3 matmul that measures the peak (8192 or more on a GPU/TPU, "
                           "where 2048^3 is too short to reach it)")
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench.json"))
  args = parser.parse_args()
  configs = args.config or [str(ROOT / "configs/bench_peer.py"), str(ROOT / "configs/wordnet.py")]
  malloc_tuned = host.tune_malloc()  # as the CLIs do; CDM_JAX_TUNE_MALLOC=0 measures without
  def peak_gflops(dtype):
    return matmul_peak_gflops(args.peak_size, dtype=jnp.dtype(dtype))
  peaks = {"float32": [peak_gflops("float32")], "bfloat16": [peak_gflops("bfloat16")]}
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; malloc tuned: {malloc_tuned}")
  results = [bench_config(path, args) for path in configs]
  for dtype, readings in peaks.items():
    readings.append(peak_gflops(dtype))
  # The peak is the best the machine did: the higher of the readings before and after the runs
  # (a single reading on a shared VM can come out 10-20% low and inflate the MFU).
  peak, bf16_peak = max(peaks["float32"]), max(peaks["bfloat16"])
  for r in results:
    r["train_mfu"] = r["train_gflops"] / peak
    # against the peak of the dtype the matmuls run in (bfloat16 operands: the bf16 peak)
    r["train_mfu_own_dtype"] = r["train_gflops"] / (bf16_peak if r["matmul_dtype"] == "bfloat16" else peak)
  rows = [
      ("params (M)", "params_M", "{:.2f}"), ("train step (s)", "train_step_s", "{:.3f}"),
      ("tokens/s", "tokens_per_s", "{:.0f}"), ("model GFLOP/step", "train_model_gflop", "{:.1f}"),
      ("GFLOP/s", "train_gflops", "{:.0f}"), ("MFU vs float32 peak", "train_mfu", "{:.0%}"),
      ("matmul operands", "matmul_dtype", "{}"),
      ("MFU vs their dtype's peak", "train_mfu_own_dtype", "{:.0%}"),
      ("compile (s)", "train_compile_s", "{:.1f}"), ("page faults/step", "train_page_faults", "{:.0f}"),
      ("sample step (s)", "sample_step_s", "{:.3f}"),
      ("denoiser forward (s)", "denoiser_forward_s", "{:.3f}"),
      ("loop overhead (vs N forwards)", "loop_overhead", "{:.1%}"),
      ("  of which loop machinery", "loop_machinery_share", "{:.1%}"),
      ("clamp alone / in the loop (s)", ("clamp_s", "clamp_in_loop_s"), "{:.3f} / {:.3f}"),
      ("decode+clamp share", "decode_clamp_share", "{:.1%}"),
      ("default steps", "default_steps", "{}"), ("64 samples (s)", "time_to_64_samples_s", "{:.0f}"),
      ("peak RSS (GiB)", "peak_rss_GiB", "{:.2f}")]
  names = [pathlib.Path(r["config"]).stem for r in results]
  print("| metric | " + " | ".join(names) + " |")
  print("|---|" + "---|" * len(names))
  for label, key, fmt in rows:
    keys = key if isinstance(key, tuple) else (key,)
    print(f"| {label} | " + " | ".join(fmt.format(*(r[k] for k in keys)) for r in results) + " |")
  print(f"{args.peak_size}^3 matmul peak, GFLOP/s (before, after the runs; MFU uses the higher): float32 "
        + ", ".join(f"{g:.0f}" for g in peaks["float32"]) + "; bfloat16 operands "
        + ", ".join(f"{g:.0f}" for g in peaks["bfloat16"]))
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"peak_gflops": peak, "bf16_peak_gflops": bf16_peak,
                             "peak_readings_gflops": peaks, "malloc_tuned": malloc_tuned,
                             "device": jax.devices()[0].device_kind, "results": results}, indent=2))


if __name__ == "__main__":
  main()
