"""The compute gap between a trained diffusion workdir and the autoregressive baseline.

python experiments/compute_gap.py --workdir=DIR [--fractions=1/64,1/32,1/16,1/8,1/4,1/2,1]
    [--num_samples=300] [--judge_multiple=2] [--ladder_flops=F] [--set FIELD=VALUE ...]
    [--lengths=free|data] [--out=DIR/compute_gap]

The protocol (AR ladder, judge, entropy rule, `--lengths`, `--set decoder=contextual`, a latent
model's autoencoder FLOPs) is described in `cdm_jax/evaluation/gap_protocol.py`.
"""

import argparse
import dataclasses
import pathlib

from cdm_jax.evaluation import gap_protocol
from cdm_jax.runtime import topology


def main():
  topology.quiet_libtpu()  # libtpu installed on a machine without chips: no page of warnings
  from cdm_jax.evaluation import ar_model as judge_lib  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--fractions", default="1/64,1/32,1/16,1/8,1/4,1/2,1")
  parser.add_argument("--num_samples", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0, help="sampling and MAUVE seed")
  parser.add_argument("--ar_seed", type=int, default=1)
  parser.add_argument("--judge_seed", type=int, default=judge_lib.GAP_JUDGE_SEED)
  parser.add_argument("--judge_multiple", type=int, default=2)
  parser.add_argument("--min_steps", type=int, default=4, help="smallest AR rung when extending down")
  parser.add_argument("--ladder_flops", type=float, default=0.0,
                      help="FLOPs of the 1x rung (default: this run's); pass one value to compare "
                           "several runs on the same (cached) ladder and judge")
  parser.add_argument("--ladder_like", default=None, metavar="WORKDIR",
                      help="size the AR ladder and the judge like this workdir's model (default: "
                           "like --workdir's), to compare models of different shapes on one ladder")
  parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                      help="a sampling option for the diffusion samples (repeatable), e.g. "
                           "--set sampler=renoise; default: the workdir's config")
  parser.add_argument("--lengths", choices=("free", "data"), default="free",
                      help="free: the diffusion model ends its samples itself; data: each sample's "
                           "length is drawn from the training split's and fixed")
  parser.add_argument("--raw_params", action="store_true",
                      help="sample the raw parameters instead of their EMA")
  parser.add_argument("--out", default=None, help="default: WORKDIR/compute_gap")
  args = parser.parse_args()
  settings = gap_protocol.GapSettings(**{f.name: getattr(args, f.name)
                                         for f in dataclasses.fields(gap_protocol.GapSettings)})
  gap_protocol.write(gap_protocol.measure(settings),
                     pathlib.Path(args.out or pathlib.Path(args.workdir) / "compute_gap"))


if __name__ == "__main__":
  main()
