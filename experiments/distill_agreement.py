"""How closely a distilled student's N DDIM steps follow its teacher's 2N, from the same noise.

  python experiments/distill_agreement.py --workdir=DIR --student=8 [--num_samples=64 --seed=0]

For the teacher at N and 2N steps and the student at N steps, all from the same starting noise
(no clamp, self-conditioning chained as the sampler does): the mean squared distance of the final
x0 estimate to the teacher's 2N-step one, and the share of decoded tokens that agree with it. A
student that learned its round should sit nearer the teacher's 2N steps than the teacher's own N.
"""

import argparse

import jax
import numpy as np


import cdm_jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from cdm_jax.sampling import artifacts
from cdm_jax import sampling
from cdm_jax.core import rounding, samplers


def final_estimate(generator, steps: int, num_samples: int, seed: int):
  """(x0_hat [n, length, dim], decoded tokens [n, length]) after `steps` DDIM steps."""
  cfg = generator.model.config
  noise = jax.random.normal(jax.random.PRNGKey(seed), (num_samples, cfg.seq_len, cfg.embed_dim))
  denoise = sampling.make_denoise_fn(generator.model, generator.params, generator.schedule)
  x0 = samplers.sample_loop(denoise, noise, jax.random.PRNGKey(seed + 1), generator.schedule, steps,
                            sampler="ddim")
  table, bias = generator.model.apply(generator.params, method="readout_weights")
  return np.asarray(x0), np.asarray(rounding.decode(x0, table, bias))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--student", type=int, required=True)
  parser.add_argument("--num_samples", type=int, default=64)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  n = args.student
  teacher = cdm_jax.load(args.workdir)
  student = cdm_jax.load(args.workdir, student=n)
  meta = artifacts.read_student(args.workdir, n)
  if meta["teacher_steps"] != 2 * n or meta["round"] != 1:
    print(f"note: this student's own teacher was the {meta['teacher_steps']}-step student; the "
          "rows below compare with the trained model.")
  reference, ref_tokens = final_estimate(teacher, 2 * n, args.num_samples, args.seed)
  for name, generator in ((f"teacher, {n} steps", teacher), (f"student, {n} steps", student)):
    x0, tokens = final_estimate(generator, n, args.num_samples, args.seed)
    print(f"{name:>18s}: distance to the teacher's {2 * n} steps {np.mean((x0 - reference)**2):.4f}, "
          f"tokens agreeing {np.mean(tokens == ref_tokens):.3f}")


if __name__ == "__main__":
  main()
