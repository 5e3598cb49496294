"""Fault injection on real training processes: `kill -9` at random moments (during steps, during
async checkpoint saves, during start-up), corrupted newest checkpoints, a full disk during a save
and a NaN loss (`inject.py`), each followed by rerunning the same command; the final train state
must equal an uninterrupted run's bit for bit, and an injected fault must end in one clear line.

python experiments/faults/run.py [--kills=20 --injections=4 --seed=0 --out=experiments/results/faults.md]

Each run is `python -m cdm_jax.cli.train --config=configs/tiny.py` on a small corpus this script writes,
with a checkpoint every 5 of 40 steps (on one CPU device, so every run sees the same arithmetic).
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORDS = "the a cat dog sat ran on under mat log big small red blue green tree house bird".split()
STEPS = 40


def command(workdir: pathlib.Path, corpus: pathlib.Path, steps: int = STEPS) -> list[str]:
  return [sys.executable, "-m", "cdm_jax.cli.train", f"--config={ROOT / 'configs/tiny.py'}",
          f"--workdir={workdir}", f"--config.data.path={corpus}",
          f"--config.train.num_train_steps={steps}", "--config.train.checkpoint_every_steps=5",
          "--config.train.log_every_steps=5", "--config.train.eval_every_steps=0",
          "--config.train.sample_every_steps=0"]


ENV = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}


def run(cmd, kill_after: float | None = None) -> tuple[int, float]:
  """(exit status, seconds); with `kill_after`, SIGKILL the process after that many seconds."""
  start = time.perf_counter()
  process = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  try:
    _, err = process.communicate(timeout=kill_after)
  except subprocess.TimeoutExpired:
    process.kill()  # SIGKILL: no handler, no cleanup
    process.communicate()
    return -9, time.perf_counter() - start
  if process.returncode:
    sys.stderr.write(err[-3000:])
  return process.returncode, time.perf_counter() - start


def final_state(workdir: pathlib.Path):
  """Leaves of the newest train state, the data position and the step, restored in-process."""
  os.environ.update(XLA_FLAGS=ENV["XLA_FLAGS"], JAX_PLATFORMS="cpu")
  import jax  # pylint: disable=g-import-not-at-top
  from cdm_jax.models import builders  # pylint: disable=g-import-not-at-top
  from cdm_jax.runtime import checkpointing
  from cdm_jax.runtime import parallel
  config = builders.load_config(str(workdir))
  model = builders.make_model(config)
  abstract = builders.abstract_state(config, model, builders.make_optimizer(config.train),
                                     parallel.make_mesh())
  manager = checkpointing.make_manager(str(workdir), async_save=False)
  try:
    state, data, step = checkpointing.restore_latest(manager, abstract)
  finally:
    manager.close()
  return [np.asarray(x) for x in jax.tree.leaves(state)], data, step


def same(a, b) -> bool:
  return (a[1] == b[1] and a[2] == b[2]
          and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a[0], b[0])))


def corrupt(step_dir: pathlib.Path, how: str, rng: random.Random):
  files = sorted(p for p in step_dir.rglob("*") if p.is_file())
  if how == "truncated":
    for path in files:
      data = path.read_bytes()
      path.write_bytes(data[:len(data) // 3])
  elif how == "missing_metadata":
    for path in files:
      if "METADATA" in path.name or path.name == "metadata":
        path.unlink()
  else:
    for path in files:
      path.write_bytes(bytes(rng.getrandbits(8) for _ in range(max(16, path.stat().st_size))))


def kill_trials(args, tmp: pathlib.Path, corpus: pathlib.Path, reference, wall: float) -> dict:
  rng = random.Random(args.seed)
  rows = []
  for trial in range(args.kills):
    workdir = tmp / f"kill{trial}"
    moment = rng.uniform(0.2, 1.0) * wall  # start-up, steps and saves all get hit
    code, _ = run(command(workdir, corpus), kill_after=moment)
    reruns = 0
    while code != 0 and reruns < 3:
      code, _ = run(command(workdir, corpus))
      reruns += 1
    checkpoints = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                         if p.name.isdigit()) if (workdir / "checkpoints").is_dir() else []
    ok = code == 0 and same(final_state(workdir), reference)
    rows.append({"trial": trial, "killed_at_s": round(moment, 1), "reruns": reruns,
                 "identical": ok, "checkpoints_after": checkpoints})
    print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
  return {"trials": len(rows), "identical": sum(r["identical"] for r in rows),
          "killed_running": sum(r["reruns"] > 0 for r in rows), "rows": rows}


def corruption_trials(args, tmp: pathlib.Path, corpus: pathlib.Path, reference_dir) -> dict:
  rng = random.Random(args.seed + 1)
  rows = []
  for how in ("truncated", "missing_metadata", "garbage"):
    workdir = tmp / f"corrupt_{how}"
    shutil.copytree(reference_dir, workdir)
    corrupt(workdir / "checkpoints" / str(STEPS), how, rng)
    # resume to the same end: the newest step is unreadable, so training redoes 35 -> 40
    code, _ = run(command(workdir, corpus))
    moved = list((workdir / "checkpoints_unreadable").glob(f"{STEPS}-*"))
    ok = code == 0 and len(moved) == 1 and same(final_state(workdir), final_state(reference_dir))
    rows.append({"corruption": how, "resumed_identical": ok, "moved_aside": len(moved)})
    print(json.dumps(rows[-1]), flush=True)
  return {"trials": len(rows), "identical": sum(r["resumed_identical"] for r in rows), "rows": rows}


def injected(fault: str, workdir: pathlib.Path, corpus: pathlib.Path) -> list[str]:
  return [sys.executable, str(ROOT / "experiments/faults/inject.py"), fault, "--",
          *command(workdir, corpus)[3:]]


def run_stderr(cmd) -> tuple[int, str]:
  process = subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, check=False)
  return process.returncode, process.stderr


def injected_trials(args, tmp: pathlib.Path, corpus: pathlib.Path, reference) -> dict:
  """A full disk during the save of a random checkpoint step, and a NaN loss at a random step:
  each run must stop with one `error:` line naming what happened (exit 1), the checkpoints before
  it must stay readable, and rerunning the plain command must end bit-identical to the reference."""
  rng = random.Random(args.seed + 2)
  rows = []
  for trial in range(args.injections):
    kind = ("full_disk", "nan")[trial % 2]
    step = rng.randrange(10, STEPS + 1, 5) if kind == "full_disk" else rng.randrange(6, STEPS)
    expect = (f"resume from step {step - 5}" if kind == "full_disk"
              else f"Non-finite loss at step {step};")
    workdir = tmp / f"{kind}{trial}"
    code, err = run_stderr(injected(f"{kind}:{step}", workdir, corpus))
    last_line = err.strip().splitlines()[-1] if err.strip() else ""
    clear = code == 1 and last_line.startswith("error:") and expect in last_line
    rerun, _ = run(command(workdir, corpus))
    ok = clear and rerun == 0 and same(final_state(workdir), reference)
    rows.append({"fault": kind, "step": step, "exit": code, "message": last_line[:200],
                 "clear_message": clear, "rerun_identical": ok})
    print(json.dumps(rows[-1]), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
  summary = {}
  for kind in ("full_disk", "nan"):
    mine = [r for r in rows if r["fault"] == kind]
    summary[kind] = {"trials": len(mine), "clear": sum(r["clear_message"] for r in mine),
                     "identical": sum(r["rerun_identical"] for r in mine)}
  return {**summary, "rows": rows}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--injections", type=int, default=4, help="full disk / NaN runs, alternating")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=str(ROOT / "experiments/results/faults.md"))
  args = parser.parse_args()
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="faults_"))
  corpus = tmp / "corpus.txt"
  words = np.random.default_rng(0)
  corpus.write_text("\n".join(" ".join(words.choice(WORDS, words.integers(2, 7)))
                              for _ in range(600)))
  code, wall = run(command(tmp / "reference", corpus))
  assert code == 0, "the uninterrupted reference run failed"
  reference = final_state(tmp / "reference")
  print(f"reference run: {wall:.1f} s, final step {reference[2]}", flush=True)
  kills = kill_trials(args, tmp, corpus, reference, wall)
  corruptions = corruption_trials(args, tmp, corpus, tmp / "reference")
  injections = injected_trials(args, tmp, corpus, reference)
  disk, nans = injections["full_disk"], injections["nan"]
  table = ["| fault | trials | resumed, final state bit-identical to an uninterrupted run | lost |",
           "|---|---|---|---|",
           f"| `kill -9` at a random moment (0.2-1.0 x the {wall:.0f} s run: start-up, steps, async "
           f"saves; {kills['killed_running']} hit a running process, the rest came after it had "
           f"finished) | {kills['trials']} | {kills['identical']} | steps after the last checkpoint "
           "(interval 5), redone |",
           f"| newest checkpoint truncated / metadata missing / garbage bytes | "
           f"{corruptions['trials']} | {corruptions['identical']} (moved to checkpoints_unreadable/) "
           "| the newest checkpoint interval, redone |",
           f"| full disk (ENOSPC on every write of a random checkpoint step's save) | "
           f"{disk['trials']} | {disk['identical']} (one `error:` line naming the step to resume "
           f"from, exit 1: {disk['clear']}) | the failed save's interval, redone |",
           f"| NaN loss at a random step k | {nans['trials']} | {nans['identical']} (one `error:` "
           f"line naming k, exit 1: {nans['clear']}) | steps after the last checkpoint, redone |"]
  text = "\n".join(table) + "\n"
  pathlib.Path(args.out).write_text(
      f"# Faults tried\n\n`python experiments/faults/run.py --kills={args.kills} "
      f"--injections={args.injections} --seed={args.seed}` on {time.strftime('%Y-%m-%d')}:\n\n{text}\n```json\n"
      + json.dumps({"kill": kills, "corruption": corruptions, "injected": injections},
                   indent=1) + "\n```\n")
  print(text)
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
