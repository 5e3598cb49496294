"""The compute gap at several budgets: one command trains a diffusion config at a list of budgets and
measures each against the AR ladder, with one judge and one ladder for every budget.

    python -m cdm_jax.evaluation.scaling --config=configs/wordnet_latent.py \\
        --budgets=600,2000,6000 --seeds=0,1 --out=DIR [--set train.batch_size=128 ...] \\
        [--ladder_flops=1e14] [--ladder_like=WORKDIR] [--num_samples=600] [--also=OTHER_DIR]

Per seed, the largest budget is one `train.schedule="wsd"` run (DIR/seedS/stepsN) that keeps a
checkpoint at the cooldown start of every smaller budget; each smaller budget is a branch from it
(`cdm_jax.training.branch`) that trains only its cooldown. Every workdir is then measured by the
compute-gap protocol (`gap_protocol`: the autoencoder's FLOPs counted, the entropy rule); the AR
ladder's 1x rung is `--ladder_flops` (default: the largest budget's FLOPs), so every budget, and
every recipe run with the same value, meets the same cached ladder and judge. The ladder and the
judge are sized like the config's denoiser; a recipe of another width or depth names a workdir of
the recipe it is compared with in `--ladder_like`, or it meets a ladder and judge of its own.

Written to DIR: scaling.json (the rows and the slopes), scaling.md (the table) and scaling.png
(judge perplexity against training FLOPs for diffusion and the AR ladder, and the gap against
FLOPs; `--also` adds other scaling folders' rows to the plot and table). The slope is the
least-squares slope of log gap against log FLOPs, per seed; the spread is over seeds.

Resumable: a rerun after a crash resumes the interrupted training and skips every finished run and
every measured gap (DIR/seedS/stepsN/compute_gap/compute_gap.json). A later call may add seeds or
budgets to DIR (e.g. `--seeds=1` after `--seeds=0`): the rows measured before stay in the table. A
call with another config, other overrides or another ladder is refused, since its rows would not be
comparable.
"""

import argparse
import json
import math
import pathlib

import numpy as np

from cdm_jax.evaluation import compute_gap
from cdm_jax.runtime import overrides as overrides_lib, topology

TABLE, SUMMARY, PLOT = "scaling.md", "scaling.json", "scaling.png"


def budget_config(config, budget: int, seed: int):
  """`config` as the run of `budget` steps in a scaling folder: "wsd", no time limit, no periodic
  evaluation or samples; the largest budget keeps the smaller budgets' branch points."""
  # pylint: disable=g-import-not-at-top
  from cdm_jax.models import builders
  config = config.copy_and_resolve_references()
  config.seed = seed
  config.train.update(schedule="wsd", num_train_steps=budget, time_limit_minutes=0.0,
                      eval_every_steps=0, sample_every_steps=0)
  config.train.checkpoint_every_steps = min(500, budget)
  return config, builders.cooldown_start(config.train)


def plan(config, budgets: list[int], seeds: list[int], out: pathlib.Path) -> list[dict]:
  """The runs in training order: per seed the largest budget, then its branches."""
  largest = max(budgets)
  runs = []
  for seed in seeds:
    main_dir = out / f"seed{seed}" / f"steps{largest}"
    branches = []
    for budget in sorted(set(budgets) - {largest}):
      branch, start = budget_config(config, budget, seed)
      branch.train.update(branch_from=str(main_dir), branch_step=start)
      branches.append({"seed": seed, "steps": budget, "workdir": out / f"seed{seed}" / f"steps{budget}",
                       "config": branch})
    main, _ = budget_config(config, largest, seed)
    main.train.keep_steps = tuple(b["config"].train.branch_step for b in branches)
    runs.append({"seed": seed, "steps": largest, "workdir": main_dir, "config": main})
    runs.extend(branches)
  return runs


def row_of(run: dict, result: dict) -> dict:
  diffusion = result["diffusion"]
  return {"seed": run["seed"], "steps": run["steps"], "workdir": str(run["workdir"]),
          "flops": diffusion["flops"], "judge_ppl": diffusion["judge_ppl"],
          "entropy_valid": result["entropy_valid"], "empty_fraction": diffusion["empty_fraction"],
          "gap": result["compute_gap"], "status": result["status"],
          "gap_bound": result.get("compute_gap_lower_bound", result.get("compute_gap_upper_bound")),
          "num_samples": result["num_samples"]}


def slopes(rows: list[dict]) -> dict:
  """Least-squares slope of log gap against log FLOPs for each seed with two or more measured
  gaps; their mean and spread (max - min) over seeds."""
  per_seed = {}
  for seed in sorted({r["seed"] for r in rows}):
    points = [(math.log(r["flops"]), math.log(r["gap"])) for r in rows
              if r["seed"] == seed and r["gap"] is not None]
    if len(points) >= 2:
      x, y = np.array(points).T
      per_seed[seed] = float(np.polyfit(x, y, 1)[0])
  values = list(per_seed.values())
  return {"per_seed": per_seed, "mean": float(np.mean(values)) if values else None,
          "spread": float(np.ptp(values)) if values else None}


def _gap_text(row: dict) -> str:
  text = compute_gap.gap_figure(row["gap"], row["status"], row["gap_bound"])
  return text + ("" if row["entropy_valid"] else " (entropy rule failed)")


def table(summaries: list[dict]) -> str:
  lines = ["| recipe | seed | diffusion steps | training FLOPs | judge ppl | empty | compute gap |",
           "|---|---|---|---|---|---|---|"]
  for summary in summaries:
    for r in summary["rows"]:
      lines.append(f"| {summary['name']} | {r['seed']} | {r['steps']} | {r['flops']:.3g} | "
                   f"{r['judge_ppl']:.1f} | {r['empty_fraction']:.1%} | {_gap_text(r)} |")
  lines.append("")
  for summary in summaries:
    s = summary["slopes"]
    per_seed = ", ".join(f"seed {k}: {v:+.2f}" for k, v in s["per_seed"].items())
    mean = "-" if s["mean"] is None else f"{s['mean']:+.2f} (spread {s['spread']:.2f})"
    lines.append(f"- {summary['name']}: slope of log gap against log FLOPs {mean}; {per_seed}")
  return "\n".join(lines) + "\n"


def plot(summaries: list[dict], path: pathlib.Path):
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  ladder = summaries[0]["ladder"]
  left.loglog([r["flops"] for r in ladder], [r["judge_ppl"] for r in ladder], "k.-", label="AR")
  for summary in summaries:
    rows = summary["rows"]
    for seed in sorted({r["seed"] for r in rows}):
      mine = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["flops"])
      label = f"{summary['name']} seed {seed}"
      left.loglog([r["flops"] for r in mine], [r["judge_ppl"] for r in mine], "o-", label=label)
      measured = [r for r in mine if r["gap"] is not None]
      right.loglog([r["flops"] for r in measured], [r["gap"] for r in measured], "o-", label=label)
  left.set(xlabel="training FLOPs", ylabel="judge perplexity of samples")
  right.set(xlabel="diffusion training FLOPs", ylabel="compute gap to AR (x)")
  left.legend(fontsize=7)
  right.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def earlier_rows(out: pathlib.Path, recipe: dict) -> list[dict]:
  """The rows an earlier call measured in `out`; ValueError when that call measured another
  `recipe` (config, overrides, ladder)."""
  path = out / SUMMARY
  if not path.exists():
    return []
  earlier = json.loads(path.read_text())
  if any(key in earlier and earlier[key] != value for key, value in recipe.items()):
    theirs = ", ".join(f"{key}={earlier.get(key)}" for key in recipe)
    raise ValueError(f"{out} holds the rows of another recipe ({theirs}); give this one another "
                     "--out")
  return earlier["rows"]


def run(args) -> dict:
  # pylint: disable=g-import-not-at-top
  from cdm_jax.evaluation import gap_protocol
  from cdm_jax.runtime import config_files
  from cdm_jax.training import flops, train
  from cdm_jax.training import autoencoder as ae_stage
  from cdm_jax.models import builders

  out = pathlib.Path(args.out)
  config = config_files.load(args.config, overrides_lib.parse_settings(args.set or []))
  budgets = sorted(int(b) for b in args.budgets.split(","))
  seeds = [int(s) for s in args.seeds.split(",")]
  ladder_flops = args.ladder_flops or (
      budgets[-1] * flops.diffusion_train_flops(config)["train"]
      + (ae_stage.autoencoder_flops(config) if builders.is_latent(config) else 0.0))
  recipe = {"config": args.config, "overrides": args.set or [], "ladder_flops": ladder_flops,
            "ladder_like": args.ladder_like}
  earlier = earlier_rows(out, recipe)
  rows, ladder = [], None
  for item in plan(config, budgets, seeds, out):
    workdir = item["workdir"]
    done = workdir / "compute_gap" / "compute_gap.json"
    if not done.exists():
      print(f"== seed {item['seed']}, {item['steps']} steps: {workdir}", flush=True)
      train.train_and_evaluate(item["config"], str(workdir))
      settings = gap_protocol.GapSettings(workdir=str(workdir), num_samples=args.num_samples,
                                          ladder_flops=ladder_flops, fractions=args.fractions,
                                          seed=args.sample_seed, ladder_like=args.ladder_like)
      gap_protocol.write(gap_protocol.measure(settings), done.parent)
    result = json.loads(done.read_text())
    rows.append(row_of(item, result))
    ladder = [{"flops": r["flops"], "judge_ppl": r["judge_ppl"]} for r in result["ar"]]
  measured = {(r["seed"], r["steps"]) for r in rows}
  rows += [r for r in earlier if (r["seed"], r["steps"]) not in measured]
  summary = {"name": args.name or pathlib.Path(args.config).stem, **recipe,
             "budgets": sorted({r["steps"] for r in rows}),
             "seeds": sorted({r["seed"] for r in rows}),
             "num_samples": args.num_samples,
             "rows": sorted(rows, key=lambda r: (r["seed"], r["steps"])), "ladder": ladder,
             "slopes": slopes(rows)}
  (out / SUMMARY).write_text(json.dumps(summary, indent=2))
  return summary


def report(summaries: list[dict], out: pathlib.Path):
  text = table(summaries)
  (out / TABLE).write_text(text)
  print(text)
  plot(summaries, out / PLOT)


def main(argv=None):
  topology.quiet_libtpu()  # libtpu installed on a machine without chips: no page of warnings
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--budgets", required=True, help="diffusion steps, e.g. 600,2000,6000")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--out", required=True)
  parser.add_argument("--name", default=None, help="the recipe's name in tables (default: the config's)")
  parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="a config override (repeatable), e.g. --set train.batch_size=128")
  parser.add_argument("--ladder_flops", type=float, default=0.0,
                      help="FLOPs of the AR ladder's 1x rung (default: the largest budget's); "
                           "give recipes compared on one ladder the same value")
  parser.add_argument("--ladder_like", default=None, metavar="WORKDIR",
                      help="take the AR ladder's and the judge's sizes from this workdir's model "
                           "(default: the config's): a recipe of another width or depth then "
                           "meets the same ladder and judge as the recipe it is compared with")
  parser.add_argument("--fractions", default="1/64,1/32,1/16,1/8,1/4,1/2,1")
  parser.add_argument("--num_samples", type=int, default=600)
  parser.add_argument("--sample_seed", type=int, default=0)
  parser.add_argument("--also", action="append", default=[], metavar="DIR",
                      help="another scaling folder whose rows join the table and the plot")
  args = parser.parse_args(argv)
  try:
    summaries = [run(args)]
  except ValueError as err:  # a bad value or another recipe's folder: one line, exit 2
    parser.exit(2, f"error: {err}\n")
  for other in args.also:
    summaries.append(json.loads((pathlib.Path(other) / SUMMARY).read_text()))
  report(summaries, pathlib.Path(args.out))


if __name__ == "__main__":
  main()
