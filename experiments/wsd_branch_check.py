"""Whether a "wsd" branch run ends where a dedicated run of its length ends.

python experiments/wsd_branch_check.py --branch=DIR_A --dedicated=DIR_B

Both workdirs are trained with train.schedule="wsd" and the same config and seed, one as a branch
(`train.branch_from`, `train.branch_step`: a longer run's stable-phase checkpoint, then only the
cooldown), one from scratch. Prints, per part of the final train state (parameters, their EMA),
the largest absolute difference and whether the two are bit-identical, and both runs' last logged
losses.
"""

import argparse
import json
import pathlib

import jax
import numpy as np

from cdm_jax.models import builders
from cdm_jax.runtime import checkpointing, parallel


def final_state(workdir: str):
  config = builders.load_config(workdir)
  model = builders.make_model(config)
  abstract = builders.abstract_params(config, model, parallel.make_mesh(1))
  restored, step = checkpointing.restore_subtree(workdir, {"params": abstract, "ema_params": abstract})
  return restored, step


def last_logged(workdir: str) -> dict:
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines if "loss" in json.loads(line)][-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--branch", required=True)
  parser.add_argument("--dedicated", required=True)
  args = parser.parse_args()
  (a, step_a), (b, step_b) = final_state(args.branch), final_state(args.dedicated)
  report = {"branch_step": step_a, "dedicated_step": step_b}
  for part in ("params", "ema_params"):
    leaves_a, leaves_b = jax.tree.leaves(a[part]), jax.tree.leaves(b[part])
    diffs = [float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(leaves_a, leaves_b)]
    report[part] = {"max_abs_difference": max(diffs), "bit_identical": max(diffs) == 0.0,
                    "arrays": len(diffs)}
  report["last_logged"] = {"branch": last_logged(args.branch), "dedicated": last_logged(args.dedicated)}
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
