"""Prints one call of each conditional sampling API on a trained workdir (the README's table).

python experiments/conditional_examples.py --workdir=DIR [--seed=0]
"""

import argparse
import json

import cdm_jax  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  g = cdm_jax.load(args.workdir)
  seed = args.seed
  calls = {
      'g.sample(4)': lambda: g.sample(4, seed=seed),
      'g.sample(4, prefix="a small")': lambda: g.sample(4, prefix="a small", seed=seed),
      'g.sample(4, suffix="of a tree", gap_length=6)':
          lambda: g.sample(4, suffix="of a tree", gap_length=6, seed=seed),
      'g.infill("the ___ of a ___:2 tree", 4)':
          lambda: g.infill("the ___ of a ___:2 tree", 4, seed=seed),
      'g.infill("the ___ of a tree", 4, gap_length=(2, 6), mbr=5)':
          lambda: g.infill("the ___ of a tree", 4, gap_length=(2, 6), mbr=5, seed=seed),
      'g.sample(4, prefix="a small", guidance_scale=2.0)':
          lambda: g.sample(4, prefix="a small", guidance_scale=2.0, seed=seed),
  }
  print(json.dumps({name: call() for name, call in calls.items()}, indent=1))


if __name__ == "__main__":
  main()
