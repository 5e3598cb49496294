"""How many tokens the contextual read-out decoder changes against the tied read-out, same samples.

python experiments/decoder_changes.py --workdir=DIR [--num_samples=100] [--seed=0]
    [--set FIELD=VALUE]

Both decode the same final estimates (same seed and sampling options; only `decoder` differs), so
every difference is the decoder's doing. Needs `cdm-readout --workdir=DIR` first.
Prints the share of positions and of samples that differ, and a few differing pairs.
"""

import argparse
import json

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_samples", type=int, default=100)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a sampling option for both runs, e.g. logit_temperature=1.0")
  parser.add_argument("--show", type=int, default=5, help="differing pairs to print")
  args = parser.parse_args()
  from cdm_jax.runtime import overrides as overrides_lib  # pylint: disable=g-import-not-at-top
  from cdm_jax import sampling  # pylint: disable=g-import-not-at-top
  generator = sampling.load(args.workdir)
  overrides = overrides_lib.dataclass_overrides(generator.sample_config, args.set)
  overrides.pop("decoder", None)
  tied = generator.sample_tokens(args.num_samples, seed=args.seed, **overrides)
  contextual = generator.sample_tokens(args.num_samples, seed=args.seed, decoder="contextual",
                                       **overrides)
  differ = tied != contextual
  print(json.dumps({"workdir": args.workdir, "num_samples": args.num_samples, "seed": args.seed,
                    "sampling": overrides, "positions_changed": float(differ.mean()),
                    "samples_changed": float(differ.any(axis=1).mean())}))
  for i in np.flatnonzero(differ.any(axis=1))[:args.show]:
    print(f"  tied:       {generator.decode(tied[i:i + 1])[0]!r}")
    print(f"  contextual: {generator.decode(contextual[i:i + 1])[0]!r}")


if __name__ == "__main__":
  main()
