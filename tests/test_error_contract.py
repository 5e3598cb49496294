"""Every command against every class of user error, as a user meets them: one `error: ...` line,
the last on stderr (log lines of what was tried may precede it), nothing on stdout, exit status 2
(1 for a run that fails for a reason it names: a full disk), never a traceback. The test also
renders the table of docs/robustness.md (set CDM_JAX_ERROR_TABLE=FILE to write it)."""

import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cdm_jax.data import prepare
from cdm_jax.runtime import config_files, lock

from conftest import ROOT, WORDS

pytestmark = pytest.mark.slow  # about 60 short CLI runs, most forked from one interpreter

COMMANDS = ("train", "generate", "evaluate", "distill", "readout")
HELPED = COMMANDS + ("prepare", "compile")


def _run(command: str, *args, env=None) -> tuple[int, str, str]:
  if command == "train on a full disk":  # experiments/faults/inject.py: ENOSPC for one save
    argv = [sys.executable, str(ROOT / "experiments/faults/inject.py"), "full_disk:10", "--", *args]
  else:
    argv = [sys.executable, "-m", f"cdm_jax.cli.{command}", *args]
  result = subprocess.run(argv,
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, **(env or {})})
  return result.returncode, result.stdout, result.stderr


def _run_many(calls: list[tuple[str, tuple, dict | None]], tmp: pathlib.Path) -> list[tuple]:
  """`_run` of every (command, args, env), in order. A `bad flag` call of each command, and every
  call that changes the environment or is not a plain CLI, runs as a process of its own; the others
  fork from one interpreter that imported everything once (tests/cli_forks.py)."""
  first = {}
  for i, (command, args, env) in enumerate(calls):
    if env is None and command in HELPED and "--no_such_flag=1" in args:
      first.setdefault(command, i)
  forked = [i for i, (command, _, env) in enumerate(calls)
            if env is None and command in HELPED and i not in first.values()]
  results = [None] * len(calls)
  if forked:
    out = tmp / f"forks_{len(list(tmp.glob('forks_*')))}"
    out.mkdir()
    (out / "cases.json").write_text(json.dumps([[calls[i][0], list(calls[i][1])] for i in forked]))
    done = subprocess.run([sys.executable, str(ROOT / "tests/cli_forks.py"), str(out / "cases.json"),
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for n, i in enumerate(forked):
      results[i] = (int((out / f"{n}.code").read_text()), (out / f"{n}.out").read_text(),
                    (out / f"{n}.err").read_text())
  rest = [i for i in range(len(calls)) if results[i] is None]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the subprocesses, two at a time
    for i, result in zip(rest, pool.map(lambda i: _run(calls[i][0], *calls[i][1], env=calls[i][2]),
                                        rest)):
      results[i] = result
  return results


def _cases(trained_dir: pathlib.Path, corpus: pathlib.Path, tmp: pathlib.Path):
  """(command, error class, args, extra env, expected code, expected message start)."""
  broken = tmp / "broken"
  shutil.copytree(trained_dir, broken)
  for step_dir in (broken / "checkpoints").iterdir():
    for item in step_dir.rglob("*"):
      if item.is_file():
        item.write_bytes(b"garbage")
  fake_datasets = tmp / "no_datasets" / "datasets"
  fake_datasets.mkdir(parents=True)
  (fake_datasets / "__init__.py").write_text("raise ImportError('not installed')\n")
  no_libtpu = tmp / "no_libtpu"
  (no_libtpu / "libtpu").mkdir(parents=True)
  (no_libtpu / "libtpu" / "__init__.py").write_text("raise ImportError('not installed')\n")
  train = ("--config=configs/tiny.py", f"--config.data.path={corpus}")
  one_line = tmp / "one_line.txt"
  one_line.write_text("a single line of text\n")
  damaged, out_of_range = _damaged_folders(corpus, tmp)
  cases = [(c, "bad flag", (f"--workdir={trained_dir}", "--no_such_flag=1"), None, 2,
            "error: Unknown command line flag 'no_such_flag'") for c in COMMANDS]
  cases += [(c, "missing workdir", (f"--workdir={tmp / 'nothing'}",), None, 2,
             "error: No config.json in") for c in COMMANDS[1:]]
  cases += [(c, "unreadable checkpoint", (f"--workdir={broken}",), None, 2,
             "error: No readable checkpoint in") for c in COMMANDS[1:]]
  cases += [
      ("train", "missing flag", ("--config=configs/tiny.py",), None, 2,
       "error: flag --workdir=None: Flag --workdir must have a value"),
      ("train", "unknown config key", (*train, f"--workdir={tmp / 'a'}",
                                       "--config.model.widht=3"), None, 2,
       "error: unknown config key 'widht'; did you mean 'width'?"),
      ("train", "bad config value", (*train, f"--workdir={tmp / 'a'}",
                                     "--config.model.width=wide"), None, 2,
       "error: flag --config.model.width=wide: invalid literal for int()"),
      ("train", "missing config file", ("--config=configs/none.py", f"--workdir={tmp / 'a'}"),
       None, 2, "error: --config could not be loaded"),
      ("train", "bad corpus path", ("--config=configs/tiny.py", f"--workdir={tmp / 'b'}",
                                    f"--config.data.path={tmp / 'none.txt'}"), None, 2,
       "error: "),
      ("train", "missing extra", ("--config=configs/tiny.py", f"--workdir={tmp / 'c'}",
                                  "--config.data.corpus=hf", "--config.data.path=ag_news"),
       {"PYTHONPATH": f"{fake_datasets.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}, 2,
       "error: data.corpus='hf' needs the `datasets` package: pip install 'cdm_jax[hf]'."),
      ("train", "bad vocabulary size", (*train, f"--workdir={tmp / 'd'}",
                                        "--config.data.vocab_size=3"), None, 2,
       "error: data.vocab_size must be an integer above 4"),
      ("train", "conflicting resume", (*train, f"--workdir={trained_dir}",
                                       "--config.model.width=48"), None, 2,
       f"error: {trained_dir} was trained with a different config"),
      ("train on a full disk", "full disk", (*train, f"--workdir={tmp / 'e'}"), None, 1,
       f"error: Writing a checkpoint to {tmp / 'e'}/checkpoints failed: [Errno 28] No space left"),
      ("evaluate", "guidance without a condition", (f"--workdir={trained_dir}",
                                                    "--guidance_scale=2"), None, 2,
       "error: --guidance_scale needs a condition"),
      ("train", "negative batch", (*train, f"--workdir={tmp / 'f'}", "--config.train.batch_size=-4"),
       None, 2, "error: train.batch_size must be an integer >= 1, got -4."),
      ("train", "empty batch", (*train, f"--workdir={tmp / 'f'}", "--config.train.batch_size=0"),
       None, 2, "error: train.batch_size must be an integer >= 1, got 0."),
      ("train", "no steps", (*train, f"--workdir={tmp / 'f'}", "--config.train.num_train_steps=0"),
       None, 2, "error: train.num_train_steps must be an integer >= 1, got 0."),
      ("train", "NaN learning rate", (*train, f"--workdir={tmp / 'f'}",
                                      "--config.train.learning_rate=nan"), None, 2,
       "error: train.learning_rate must be a finite number > 0, got nan."),
      ("train", "one-line corpus", ("--config=configs/tiny.py", f"--workdir={tmp / 'g'}",
                                    f"--config.data.path={one_line}"), None, 2,
       "error: data.vocab_size=32 is too large for this corpus (1 examples; it supports at most"),
      ("train", "damaged prepared shard", ("--config=configs/tiny.py", f"--workdir={tmp / 'h'}",
                                           f"--config.data.prepared={damaged}"), None, 2,
       f"error: Shard file {damaged}/train-00000.tokens.npy is damaged"),
      ("prepare", "damaged prepared shard (--verify)", (f"--verify={damaged}",), None, 2,
       f"error: Shard file {damaged}/train-00000.tokens.npy is damaged"),
      ("prepare", "shard ids out of range (same size)", (f"--verify={out_of_range}",), None, 2,
       f"error: Shard file {out_of_range}/train-00000.tokens.npy is damaged"),
      ("compile", "unknown topology", (*train, "--topology=v5e-3"), None, 2,
       "error: Unknown TPU topology 'v5e-3'; known v5e slices: v5e-4, v5e-8"),
      ("compile", "batch the chips do not divide", (*train, "--topology=v5e-64"), None, 2,
       "error: train.batch_size=8 does not split over the slice's 64 chips"),
      ("compile", "libtpu missing", (*train, "--topology=v5e-4"),
       {"PYTHONPATH": f"{no_libtpu}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}, 2,
       "error: Compiling for a TPU needs libtpu: pip install 'cdm_jax[tpu]'."),
  ]
  return cases


def _damaged_folders(corpus: pathlib.Path, tmp: pathlib.Path) -> tuple[pathlib.Path, ...]:
  """Two prepared folders of `corpus`: one byte of a token shard changed, and every token of it
  set to an id beyond the vocabulary (same file sizes both)."""
  config = config_files.load(ROOT / "configs/tiny.py", {"data.path": str(corpus)})
  folders = []
  for name in ("damaged", "out_of_range"):
    folder = tmp / name
    prepare.prepare(config.data, str(folder), shard_tokens=1 << 20)
    tokens = folder / "train-00000.tokens.npy"
    data = bytearray(tokens.read_bytes())
    if name == "damaged":
      data[-1] ^= 0x01
    else:
      data[-2 * 1000:] = b"\xff" * 2000  # uint16 ids 65535
    tokens.write_bytes(bytes(data))
    folders.append(folder)
  return tuple(folders)


def test_every_command_reports_user_errors_on_one_line(trained, corpus, tmp_path):
  rows = ["| command | error | exit | message |", "|---|---|---|---|"]
  cases = _cases(trained[0], corpus, tmp_path)
  outputs = _run_many([(case[0], case[2], case[3]) for case in cases], tmp_path)
  for (command, what, _, _, code, start), (got, stdout, stderr) in zip(cases, outputs):
    lines = stderr.splitlines()
    assert got == code and stdout == "" and lines and lines[-1].startswith(start), (
        command, what, got, stdout, stderr[-3000:])
    assert "Traceback" not in stderr and sum(l.startswith("error:") for l in lines) == 1, stderr
    message = lines[-1].replace(str(tmp_path), "TMP").replace(str(trained[0]), "WORKDIR")
    name = "cdm-train" if command.startswith("train") else f"cdm-{command}"
    rows.append(f"| {name} | {what} | {got} | `{message[:110].replace(chr(96), chr(39))}` |")
  # A second job on a busy workdir, and the corrected command after a failed first run.
  workdir = tmp_path / "busy"
  with lock.workdir_lock(str(workdir), "training job"):
    got, _, stderr = _run("train", "--config=configs/tiny.py", f"--config.data.path={corpus}",
                          f"--workdir={workdir}")
  assert got == 2 and stderr.startswith(f"error: {workdir} is in use by another training job"), stderr
  rows.append(f"| cdm-train | second job on a busy workdir | {got} | "
              f"`{stderr.strip().replace(str(tmp_path), 'TMP')[:110]}` |")
  corrected, _, stderr = _run("train", "--config=configs/tiny.py", f"--config.data.path={corpus}",
                              f"--workdir={tmp_path / 'b'}", "--config.train.num_train_steps=2",
                              "--config.train.sample_every_steps=0")
  assert corrected == 0, stderr[-3000:]
  rows.append(f"| cdm-train | the corrected command after a bad corpus path | {corrected} | "
              "(trains) |")
  rows += _handled_rows(trained[0], tmp_path)
  table = "\n".join(rows) + "\n"
  if os.environ.get("CDM_JAX_ERROR_TABLE"):
    pathlib.Path(os.environ["CDM_JAX_ERROR_TABLE"]).write_text(table)


def _handled_rows(trained_dir: pathlib.Path, tmp: pathlib.Path) -> list[str]:
  """What used to fail and now simply works: --help, an --output in a folder not yet made, a corpus
  of long documents (trained and prepared)."""
  output = tmp / "not" / "yet" / "out.txt"
  rng = np.random.default_rng(0)
  documents = tmp / "documents.txt"
  documents.write_text("\n".join(" ".join(rng.choice(WORDS, 3000)) for _ in range(20)))
  corpus = (f"--config.data.path={documents}", "--config.data.valid_percent=10.0")
  calls = [(command, ("--help",), None) for command in HELPED] + [
      ("generate", (f"--workdir={trained_dir}", "--num_samples=2", "--steps=2",
                    f"--output={output}"), None),
      ("train", ("--config=configs/tiny.py", *corpus, f"--workdir={tmp / 'documents'}",
                 "--config.train.num_train_steps=2", "--config.train.batch_size=4",
                 "--config.train.eval_every_steps=0", "--config.train.sample_every_steps=0"),
       None),  # long lines truncated
      ("prepare", ("--config=configs/tiny.py", *corpus, "--config.data.long_lines=split",
                   f"--output={tmp / 'prepared'}"), None)]
  *helps, generated, trained_long, prepared = _run_many(calls, tmp)
  rows = []
  for command, (code, stdout, stderr) in zip(HELPED, helps):
    assert code == 0 and stdout.startswith(f"usage: cdm-{command} ") and "  --" in stdout, stderr
    assert "--workdir" in stdout or "--output" in stdout, stdout
    rows.append(f"| cdm-{command} | --help | 0 | (lists its flags) |")
  code, stdout, stderr = generated
  assert code == 0 and output.read_text().splitlines() == stdout.splitlines(), stderr[-3000:]
  rows.append("| cdm-generate | --output in a folder not yet made | 0 | (creates it, writes) |")
  assert trained_long[0] == 0, trained_long[2][-3000:]
  code, stdout, stderr = prepared
  assert code == 0 and json.loads(stdout)["read"] == 20, stderr[-3000:]
  rows.append("| cdm-train, cdm-prepare | 20 lines of 3,000 words (truncated; split) | 0 | "
              "(trains, prepares) |")
  return rows


def test_sigterm_stops_after_a_checkpoint_with_status_143(corpus, tmp_path):
  """A run SIGTERM stopped is not a finished one: it checkpoints, says so on one line and exits
  143, so `cdm-train ... && next` does not carry on; the rerun resumes from that checkpoint."""
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "cdm_jax.cli.train", "--config=configs/tiny.py",
          f"--config.data.path={corpus}", f"--workdir={workdir}",
          "--config.train.num_train_steps=100000", "--config.train.log_every_steps=5",
          "--config.train.eval_every_steps=0", "--config.train.sample_every_steps=0",
          "--config.train.checkpoint_every_steps=100000"]
  process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  deadline = time.monotonic() + 240
  metrics = workdir / "metrics.jsonl"
  while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
    assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=120)
  last = stderr.strip().splitlines()[-1]
  assert process.returncode == 143 and stdout == "", stderr[-3000:]
  assert last.startswith("stopped: SIGTERM at step ") and "rerun the same command" in last, last
  step = int(last.split("step ")[1].split(",")[0])
  assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()] == [str(step)]
