"""Two real JAX processes on 127.0.0.1 (gloo collectives, two CPU devices each) against one process
on four devices (conftest's shared `trained` run): training, evaluation, sampling, checkpoints, resume and a SIGTERM to one process.

Each run starts fresh Python processes (tests/multiprocess_worker.py) with a free port and bounded
timeouts; a failure prints every process's log.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pytest

from conftest import ROOT, trained_overrides

pytestmark = pytest.mark.slow  # trains, runs CLIs or several processes

WORKER = pathlib.Path(__file__).resolve().parent / "multiprocess_worker.py"
TRAIN = dict(num_train_steps=20, log_every_steps=5, eval_every_steps=10, sample_every_steps=10,
             checkpoint_every_steps=10)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(tmp: pathlib.Path, name: str, processes: int, devices: int, workdir, corpus,
           train: dict, sample: bool = False):
  out = tmp / name
  out.mkdir()
  spec = dict(processes=processes, devices=devices, port=_free_port(), workdir=str(workdir),
              config=str(ROOT / "configs/tiny.py"),
              overrides=trained_overrides(corpus, **{**TRAIN, **train}), out=str(out),
              sample=sample)
  (out / "spec.json").write_text(json.dumps(spec))
  env = dict(os.environ, XLA_FLAGS=(  # not conftest's four fake devices: SPEC["devices"]
      "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
      "--xla_cpu_collective_call_warn_stuck_timeout_seconds=30 "
      "--xla_cpu_collective_call_terminate_timeout_seconds=150 "
      "--xla_cpu_collective_timeout_seconds=150"))
  # Later runs of this module reuse the compiled steps of earlier ones (same programs).
  env.update(JAX_PLATFORMS="cpu", CDM_JAX_TUNE_MALLOC="0", PYTHONFAULTHANDLER="1",
             JAX_COMPILATION_CACHE_DIR=str(tmp.parent / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  procs = []
  for i in range(processes):
    log = open(out / f"log_{i}.txt", "w", encoding="utf-8")  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out / "spec.json"), str(i)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env))
  return out, procs


class Hang(Exception):
  """The processes of a run stopped making progress inside the runtime (XLA's CPU collectives over
  gloo), not in the library's Python: past the timeout, killed by a signal, or a collective
  timed out. Seen in a full suite run on a loaded 2-core machine; not reproduced with the test
  alone."""


# What XLA prints when a CPU collective fails or waits too long.
HANG_MARKERS = re.compile(r"Gloo \w+ failed|may be stuck|Termination timeout|DEADLINE_EXCEEDED")


def _finish(out: pathlib.Path, procs, timeout: float = 240):
  """Waits for every process (stopping all past `timeout` with SIGABRT, which makes Python's fault
  handler print every thread's stack into the log); fails with their logs unless all exited 0,
  raising `Hang` when the failure lies in the runtime; returns their results."""
  deadline = time.monotonic() + timeout
  codes = []
  for proc in procs:
    try:
      codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
      codes.append("timeout")
  for proc in procs:
    if proc.poll() is None:
      proc.send_signal(signal.SIGABRT)
      try:
        proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
  if codes != [0] * len(procs):
    texts = [(out / f"log_{i}.txt").read_text() for i in range(len(procs))]
    logs = "\n".join(f"--- process {i} (exit {c}) ---\n" + text[-6000:]
                     for i, (c, text) in enumerate(zip(codes, texts)))
    python_error = any(c != "timeout" and c > 0 for c in codes)
    hung = any(HANG_MARKERS.search(text) for text in texts) or not python_error
    if hung:
      raise Hang(f"exit codes {codes}\n{logs}")
    pytest.fail(f"exit codes {codes}\n{logs}")
  return [json.loads((out / f"result_{i}.json").read_text()) for i in range(len(procs))]


def _retrying_a_hang(run, tmp_path: pathlib.Path):
  """`run(folder)` in a fresh folder; once more in another when the first attempt hangs in the
  runtime (a warning then carries the first attempt's logs). A Python error fails at once."""
  try:
    return run(tmp_path / "attempt_0")
  except Hang as hang:
    warnings.warn(f"retrying a run that hung in the runtime: {str(hang)[:3000]}")
  try:
    return run(tmp_path / "attempt_1")
  except Hang as hang:
    pytest.fail(f"hung twice in a row:\n{hang}")


def _params(out: pathlib.Path, i: int) -> dict:
  with np.load(out / f"params_{i}.npz") as data:
    return dict(data)


def _assert_params_close(a: dict, b: dict, atol: float = 1e-5):
  """Every parameter within `atol`, except the attention's key bias: its true gradient is exactly
  zero (softmax ignores a constant per query), so Adam scales the rounding noise of a different
  reduction order up to full-size steps (see tests/test_parallel.py)."""
  assert a.keys() == b.keys()
  for key in a:
    x, y = a[key], b[key]
    if key.endswith("['qkv']['bias']"):
      width = x.shape[-1] // 3
      x, y = np.delete(x, np.s_[width:2 * width], -1), np.delete(y, np.s_[width:2 * width], -1)
    np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=key)


@pytest.fixture(scope="module")
def one_process(trained):
  """The reference: the shared `trained` workdir (one process, four devices, `TRAIN`'s schedule)
  as `cdm_jax.load` restores it, its samples and its last metrics."""
  import cdm_jax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  workdir, metrics = trained
  generator = cdm_jax.load(str(workdir))
  params = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(generator.params)[0]}
  return params, generator.sample(6, seed=3), metrics


def test_two_processes_train_evaluate_sample_and_resume_like_one(corpus, one_process, tmp_path):
  ref_params, ref_samples, ref_metrics = one_process

  def run(folder):
    folder.mkdir()
    workdir = folder / "workdir"
    out, procs = _start(folder, "first", 2, 2, workdir, corpus, {"stop_at_step": 10})
    first = _finish(out, procs)
    out, procs = _start(folder, "resumed", 2, 2, workdir, corpus, {}, sample=True)
    return workdir, out, first, _finish(out, procs)

  workdir, out, first, resumed = _retrying_a_hang(run, tmp_path)
  assert [r["process_count"] for r in first] == [2, 2]
  assert all(r["metrics"]["step"] == 10 for r in first)
  # The rerun resumed at step 10 and ends where one uninterrupted process ends.
  for r in resumed:
    assert r["metrics"]["step"] == 20
    for key in ("loss", "valid_bound_bits"):
      assert r["metrics"][key] == pytest.approx(ref_metrics[key], rel=1e-4, abs=1e-5), key
    assert r["samples"] == ref_samples
  _assert_params_close(_params(out, 0), ref_params)
  _assert_params_close(_params(out, 1), ref_params)
  # Every workdir file is written by process 0 alone; appended records hold each step once.
  assert not resumed[1]["written"] and not first[1]["written"]
  assert {"config.json.tmp", "tokenizer.model.tmp", "data_fingerprint.json.tmp", "metrics.jsonl",
          "samples/step_00000010.txt", "last_metrics.json"} <= set(first[0]["written"])
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert sorted(set(steps)) == [5, 10, 15, 20]
  assert len(steps) == len(set(steps)) + 2  # the eval lines of steps 10 and 20 are separate rows
  assert sorted(p.name for p in (workdir / "samples").iterdir()) == [
      "step_00000010.txt", "step_00000020.txt"]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
      10, 20]


def test_sigterm_to_one_process_stops_both_with_one_checkpoint(corpus, tmp_path):

  def run(folder):
    folder.mkdir()
    workdir = folder / "workdir"
    out, procs = _start(folder, "run", 2, 1, workdir, corpus,
                        dict(num_train_steps=100_000, eval_every_steps=0, sample_every_steps=0,
                             checkpoint_every_steps=100_000, log_every_steps=10))
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
      if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
        _finish(out, procs, timeout=0)  # raises: Hang, or the failure with both logs
        pytest.fail("training did not start: " + (out / "log_0.txt").read_text()[-3000:])
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    sent = time.monotonic()
    results = _finish(out, procs, timeout=60)
    assert time.monotonic() - sent < 60
    return workdir, results

  workdir, results = _retrying_a_hang(run, tmp_path)
  stops = {r["metrics"]["step"] for r in results}
  assert len(stops) == 1 and 20 <= stops.pop() < 100_000
  saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
  assert saved == [results[0]["metrics"]["step"]]


def test_pod_launcher_dry_run_starts_every_worker_on_a_bucket_workdir():
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, "DRY_RUN": "1", "TPU_NAME": "cdm-pod", "ZONE": "us-central2-b",
         "WORKDIR": "gs://bucket/cdm/run", "SKIP_COMPILE_CHECK": "1"}
  launch = subprocess.run(["bash", str(root / "scripts/tpu_pod.sh"), "launch"], env=env,
                          capture_output=True, text=True, check=True).stdout
  assert "--worker=all" in launch and "--multihost" in launch
  assert "--workdir=gs://bucket/cdm/run" in launch and "configs/tpu_pod.py" in launch
  stop = subprocess.run(["bash", str(root / "scripts/tpu_pod.sh"), "stop"], env=env,
                        capture_output=True, text=True, check=True).stdout
  assert "--worker=all" in stop and "TERM" in stop
  local = subprocess.run(["bash", str(root / "scripts/tpu_pod.sh"), "launch"],
                         env={**env, "WORKDIR": "/tmp/run"}, capture_output=True, text=True)
  assert local.returncode == 2 and "gs://" in local.stderr
  # Values reach the remote shell quoted: a space in the workdir or a flag stays inside its word.
  spaced = subprocess.run(["bash", str(root / "scripts/tpu_pod.sh"), "launch"],
                          env={**env, "WORKDIR": "gs://bucket/my run",
                               "EXTRA_FLAGS": "--config.seed=3 --config.train.num_train_steps=9"},
                          capture_output=True, text=True, check=True).stdout
  remote = spaced.split("--command=", 1)[1]
  assert "--workdir=gs://bucket/my\\\\\\ run" in remote, remote
  assert "--config.seed=3\\ --config.train.num_train_steps=9" in remote, remote
  # A dry run of `copy` creates no temporary folder.
  before = set(pathlib.Path(tempfile.gettempdir()).iterdir())
  subprocess.run(["bash", str(root / "scripts/tpu_pod.sh"), "copy"], env=env, check=True,
                 capture_output=True)
  assert set(pathlib.Path(tempfile.gettempdir()).iterdir()) <= before
  # `all` with DATA mounts the prepared corpus on every worker before launching the owt config.
  pod = subprocess.run(["bash", str(root / "scripts/tpu_pod.sh"), "all"],
                       env={**env, "DATA": "gs://data/owt/prepared", "CONFIG": "configs/owt_1b.py",
                            "ACCELERATOR": "v5litepod-256"},
                       capture_output=True, text=True, check=True).stdout.splitlines()
  mount = next(i for i, line in enumerate(pod) if "gcsfuse" in line)
  assert "--only-dir\\ owt/prepared\\ data\\ /mnt/owt/prepared" in pod[mount], pod[mount]
  assert "--worker=all" in pod[mount] and "configs/owt_1b.py" in pod[-1] and mount < len(pod) - 1
  bad = subprocess.run(["bash", str(root / "scripts/tpu_pod.sh"), "mount"],
                       env={**env, "DATA": "/local/folder"}, capture_output=True, text=True)
  assert bad.returncode == 2 and "gs://BUCKET/FOLDER" in bad.stderr
