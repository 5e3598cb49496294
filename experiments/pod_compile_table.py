"""The table of docs/scaling.md: every TPU config compiled for the slices it names, through libtpu
on this host (`cdm-compile`), one JSON per (config, slice, overrides) in --out (kept: a rerun
compiles only what is missing), then the markdown rows.

    python experiments/pod_compile_table.py [--out=experiments/results/pod_compile] [--only=NAME]
"""

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (name, config, slice, overrides): the slices each config's docstring names.
RUNS = [
    ("pod_1b_v5e-64", "configs/tpu_pod_1b.py", "v5e-64", []),
    ("pod_1b_v5e-4", "configs/tpu_pod_1b.py", "v5e-4", []),
    ("wordnet_v5e-4", "configs/wordnet.py", "v5e-4", []),
    ("wordnet_latent_v5e-4", "configs/wordnet_latent.py", "v5e-4", []),
    ("v4_8_v4-8", "configs/tpu_v4_8.py", "v4-8", []),
    ("pod_v4-32", "configs/tpu_pod.py", "v4-32", []),
    ("owt_1b_v5e-256", "configs/owt_1b.py", "v5e-256", []),
    ("owt_1b_v5e-256_training", "configs/owt_1b.py", "v5e-256",
     ["--functions=train_step,eval_step,sample"]),
    ("pod_1b_v5e-64_fsdp16", "configs/tpu_pod_1b.py", "v5e-64", ["--config.train.fsdp_axis_size=16"]),
]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(ROOT / "experiments/results/pod_compile"))
  parser.add_argument("--only", default="", help="comma-separated run names")
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  only = set(filter(None, args.only.split(",")))
  for name, config, tpu_slice, overrides in RUNS:
    report, refusal = out / f"{name}.json", out / f"{name}.refused.txt"
    if (only and name not in only) or report.exists() or refusal.exists():
      continue
    argv = [sys.executable, "-m", "cdm_jax.cli.compile", f"--config={config}",
            f"--topology={tpu_slice}", f"--output={report}", "--json", *overrides]
    print(f"[{name}] {' '.join(argv[2:])}", flush=True)
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
      refusal.write_text(result.stderr.strip().splitlines()[-1] + "\n")
      print(f"[{name}] {refusal.read_text().strip()}", flush=True)
  from cdm_jax.evaluation import pod_compile  # pylint: disable=g-import-not-at-top
  print(pod_compile.SUMMARY_HEADER.replace("| slice |", "| config on slice |", 1))
  for name, config, _, overrides in RUNS:
    report = out / f"{name}.json"
    if report.exists():
      result = json.loads(report.read_text())
      label = " ".join([f"`{pathlib.Path(config).name}`", *overrides, "on", result["slice"]])
      for row in pod_compile.summary_rows(result):
        print(row.replace(f"| {result['slice']} |", f"| {label} |", 1))


if __name__ == "__main__":
  main()
