"""Runs named config variants one after another and gathers their metrics.

  python experiments/sweep.py --config=configs/wordnet_mse.py --sweep=experiments/ablations/sweep.py \
      --root=workdirs/ablations [--only=name1,name2] [--evaluate --num_samples=200]

A sweep file defines `get_sweep() -> list[(name, {dotted.key: value})]` (build grids with
`itertools.product` or zips in Python) and may define `BASE_OVERRIDES` applied to every variant.
Each variant trains in ROOT/NAME (rerunning resumes unfinished ones and skips finished ones; variants
that differ only in sample.* keys share the first one's training run), its resolved config is
written there, and ROOT/results.csv and ROOT/results.md collect each variant's
last training metrics (plus the evaluation's headline figures with --evaluate).
To launch one variant elsewhere (another machine, a TPU VM), run the line printed for it.
"""

import argparse
import csv
import json
import logging
import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[1]

from cdm_jax.runtime import overrides as overrides_lib  # pylint: disable=wrong-import-position

from cdm_jax.evaluation import ar_model as judge_lib  # pylint: disable=g-import-not-at-top
from cdm_jax.training import train
from cdm_jax.runtime import config_files


def apply_overrides(config, overrides: dict):
  """Sets dotted keys; an unknown key fails with its name (like --config.a.b=v)."""
  return overrides_lib.apply_to_config(config, overrides)


def command_line(config_path: str, workdir: pathlib.Path, overrides: dict) -> str:
  flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
  return f"cdm-train --config={config_path} --workdir={workdir} {flags}"


def headline(eval_result: dict) -> dict:
  keys = ("judge_ppl_samples", "judge_ppl_real", "judge_ppl_ratio", "mauve")
  out = {f"eval_{k}": eval_result.get(k) for k in keys}
  diff = eval_result.get("diffusion", {})
  for k in ("mean_length_words", "empty_fraction", "distinct_2", "self_bleu_4", "copy_rate"):
    out[f"eval_{k}"] = diff.get(k)
  out["eval_bound_bits_per_token"] = eval_result.get("likelihood", {}).get("diffusion_bound_bits_per_token")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--sweep", required=True)
  parser.add_argument("--root", default=None, help="default: workdirs/<sweep folder name>")
  parser.add_argument("--only", default="", help="comma-separated variant names")
  parser.add_argument("--evaluate", action="store_true", help="also run cdm-evaluate per variant")
  parser.add_argument("--num_samples", type=int, default=200)
  parser.add_argument("--judge_minutes", type=float, default=judge_lib.JudgeConfig.time_limit_minutes)
  parser.add_argument("--judge_steps", type=int, default=0, help="> 0: a step-budgeted judge instead")
  parser.add_argument("--dry_run", action="store_true", help="print the launch lines only")
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO)
  sweep = runpy.run_path(args.sweep)
  variants = sweep["get_sweep"]()
  base_overrides = sweep.get("BASE_OVERRIDES", {})
  root = pathlib.Path(args.root or ROOT / "workdirs" / pathlib.Path(args.sweep).parent.name)
  only = set(filter(None, args.only.split(",")))
  rows = []
  trained_in = {}  # training overrides -> workdir: variants differing only in sample.* share one
  for name, overrides in variants:
    if only and name not in only:
      continue
    overrides = {**base_overrides, **overrides}
    training_key = json.dumps({k: v for k, v in overrides.items() if not k.startswith("sample.")},
                              sort_keys=True)
    workdir = trained_in.setdefault(training_key, root / name)
    print(f"[{name}] {command_line(args.config, workdir, overrides)}", flush=True)
    if args.dry_run:
      continue
    config = apply_overrides(config_files.load(args.config), overrides)
    done_file = workdir / "last_metrics.json"
    finished = done_file.is_file() and json.loads(done_file.read_text())["step"] >= config.train.num_train_steps
    metrics = json.loads(done_file.read_text()) if finished else train.train_and_evaluate(config, str(workdir))
    row = {"variant": name, **{k: v for k, v in overrides.items() if k not in base_overrides}, **metrics}
    if args.evaluate:
      from cdm_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
      eval_file = root / name / "sweep_eval.json"
      if eval_file.is_file():
        result = json.loads(eval_file.read_text())
      else:
        sampling = {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("sample.")}
        result = evaluate.evaluate(str(workdir), num_samples=args.num_samples,
                                   sample_overrides=sampling,
                                   judge_config=judge_lib.judge_budget(args.judge_minutes,
                                                                       args.judge_steps))
        eval_file.parent.mkdir(parents=True, exist_ok=True)
        eval_file.write_text(evaluate.to_json(result))
      row.update(headline(result))
    rows.append(row)
    write_tables(root, rows)


def write_tables(root: pathlib.Path, rows: list[dict]):
  keys = []
  for row in rows:
    keys += [k for k in row if k not in keys]
  with open(root / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(fmt(row.get(k)) for k in keys) + " |" for row in rows]
  (root / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
