"""Sampling speed through the public API, on a trained workdir: the AR model's sampling with and
without its key/value cache, and `Generator.sample` for several request sizes with the number of
sample functions each request compiled.

  python benchmarks/sampling_api.py --workdir=DIR [--ar_samples=64 --steps=20 --out=FILE.json]

The AR model is the workdir's cached judge when one exists for its corpus (else a fresh one of the
diffusion model's sizes, untrained: speed does not depend on the weights). Run on an idle machine.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

import cdm_jax
from cdm_jax.evaluation import ar_model
from cdm_jax.models import ModelConfig, TransformerLM


def _timed(fn, repeats: int = 3) -> float:
  fn()  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def ar_speed(generator, num_samples: int) -> dict:
  model_cfg = generator.config.model
  config = ModelConfig(vocab_size=generator.config.data.vocab_size,
                       seq_len=generator.config.data.seq_len, width=model_cfg.width,
                       num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
                       mlp_dim=model_cfg.mlp_dim)
  model = TransformerLM(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, config.seq_len), jnp.int32))
  lm = ar_model.Judge(model=model, params=params, info={})
  out = {}
  for cached in (False, True):
    seconds = _timed(lambda: lm.sample(num_samples, 0, batch_size=num_samples, cached=cached))
    out["cached" if cached else "uncached"] = seconds
  out["speedup"] = out["uncached"] / out["cached"]
  return out


def generator_speed(generator, sizes, steps: int) -> list[dict]:
  rows = []
  for n in sizes:
    before = generator.num_compiled
    start = time.perf_counter()
    generator.sample(n, seed=0, num_steps=steps)
    first = time.perf_counter() - start
    start = time.perf_counter()
    generator.sample(n, seed=1, num_steps=steps)
    rows.append({"num_samples": n, "first_call_s": first, "second_call_s": time.perf_counter() - start,
                 "new_compilations": generator.num_compiled - before,
                 "compiled_so_far": generator.num_compiled})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--ar_samples", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--sizes", default="1,7,64,500")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  cdm_jax.tune_malloc()
  generator = cdm_jax.load(args.workdir)
  result = {"workdir": args.workdir, "devices": jax.device_count(),
            "ar_sampling_seconds": ar_speed(generator, args.ar_samples),
            "generator_sample": generator_speed(
                generator, [int(s) for s in args.sizes.split(",")], args.steps)}
  print(json.dumps(result, indent=2))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
