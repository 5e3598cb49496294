"""Sampling speed of the latent encoder against the token-level model of the same denoiser (width,
depth, heads, MLP): seconds per `--num_samples` samples at `--steps` DDPM steps, for the token-level
demo recipe (configs/wordnet.py) and configs/wordnet_latent.py at each k of `--ratios`. Speed does
not depend on the weights, so the models are freshly initialized; the timings are interleaved
(`training.timing.interleaved_times`) and their medians reported. Run on an idle machine.

  python benchmarks/latent_sampling.py [--num_samples=64 --steps=100 --ratios=1,2,4,8 --repeats=5]
"""

import argparse
import json

import jax
import numpy as np

from cdm_jax.models import builders
from cdm_jax.runtime import parallel
from cdm_jax.runtime import overrides as overrides_lib
from cdm_jax.sampling import make_sample_fn
from cdm_jax.training import timing
from cdm_jax.runtime import config_files


def _sampler(config_name: str, settings: list[str], num_samples: int, steps: int):
  config = config_files.load(f"configs/{config_name}.py")
  overrides_lib.apply_to_config(config, overrides_lib.parse_settings(settings))
  model = builders.make_model(config)
  params = builders.init_params(config, model)
  options = builders.sample_config(config).replace(num_samples=num_samples, num_steps=steps,
                                                   sampler="ddpm", time_grid="uniform")
  fn = make_sample_fn(model, builders.make_schedule(config), parallel.make_mesh(None), options)
  return lambda: fn(params, jax.random.PRNGKey(0))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_samples", type=int, default=64)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--ratios", default="1,2,4,8")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  fns = {"token-level (configs/wordnet.py)": _sampler("wordnet", [], args.num_samples, args.steps)}
  for k in (int(r) for r in args.ratios.split(",")):
    fns[f"latent k={k}"] = _sampler("wordnet_latent", [f"model.latent_ratio={k}"],
                                    args.num_samples, args.steps)
  times = {name: float(np.median(t)) for name, t in
           timing.interleaved_times(fns, args.repeats).items()}
  base = times["token-level (configs/wordnet.py)"]
  print(f"{args.num_samples} samples, {args.steps} DDPM steps, {jax.device_count()} device(s):")
  for name, seconds in times.items():
    print(f"  {name:<34} {seconds:8.2f} s   {base / seconds:5.2f}x the token-level speed")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"num_samples": args.num_samples, "steps": args.steps, "seconds": times}, f,
                indent=2)


if __name__ == "__main__":
  main()
