"""Training-step time of a config under several XLA_FLAGS settings, one fresh process per setting.

  python benchmarks/xla_flags.py                      # bench_peer, the flags of NOTES.md
  python benchmarks/xla_flags.py --config=configs/wordnet.py --flags="" --flags="--xla_cpu_use_onednn=true"

XLA reads XLA_FLAGS once per process, so each setting runs in its own child. Each child times the
train step with `bench.py`'s `time_train_steps` (one compiling call, then `--steps` more) and its
2048^3 float32 matmul peak, and prints one line. Compare settings only within one run on an idle
machine.
"""

import argparse
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_FLAGS = ["", "--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_custom_call=true",
                 "--xla_cpu_use_thunk_runtime=false", "--xla_cpu_enable_fast_math=true",
                 "--xla_cpu_prefer_vector_width=512"]


def child(config_path: str, steps: int):
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cdm_jax.runtime import allocator, config_files  # pylint: disable=g-import-not-at-top
  from cdm_jax.training import timing  # pylint: disable=g-import-not-at-top
  allocator.tune_malloc()  # as bench.py does
  _, first, times, _ = timing.time_train_steps(config_files.load(config_path), steps)
  print(f"train step median {np.median(times):.3f} s, min {min(times):.3f} s (first call "
        f"{first:.1f} s); 2048^3 matmul {timing.matmul_peak_gflops(repeats=5):.0f} GFLOP/s",
        flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=str(ROOT / "configs/bench_peer.py"))
  parser.add_argument("--flags", action="append", help="one XLA_FLAGS value per use (default: NOTES.md's)")
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.config, args.steps)
    return
  for flags in args.flags if args.flags is not None else DEFAULT_FLAGS:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": path}
    result = subprocess.run([sys.executable, __file__, "--child", f"--config={args.config}",
                             f"--steps={args.steps}"], env=env, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines() or [f"failed: {result.stderr.strip()[-300:]}"]
    print(f"XLA_FLAGS={flags!r:55} {lines[-1]}", flush=True)


if __name__ == "__main__":
  main()
