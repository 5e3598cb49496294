"""Every command against every class of user error, as a user meets them: one `error: ...` line,
the last on stderr (log lines of what was tried may precede it), nothing on stdout, exit status 2
(1 for a run that fails for a reason it names: a full disk), never a traceback. The test also
renders the table of docs/robustness.md (set CDM_JAX_ERROR_TABLE=FILE to write it)."""

import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from cdm_jax.runtime import lock

from conftest import ROOT

pytestmark = pytest.mark.slow  # about 20 short subprocesses

COMMANDS = ("train", "generate", "evaluate", "distill", "readout")


def _run(command: str, *args, env=None) -> tuple[int, str, str]:
  if command == "train on a full disk":  # experiments/faults/inject.py: ENOSPC for one save
    argv = [sys.executable, str(ROOT / "experiments/faults/inject.py"), "full_disk:10", "--", *args]
  else:
    argv = [sys.executable, "-m", f"cdm_jax.cli.{command}", *args]
  result = subprocess.run(argv,
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, **(env or {})})
  return result.returncode, result.stdout, result.stderr


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
  train = ("--config=configs/tiny.py", f"--config.data.path={corpus}")
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
  ]
  return cases


def test_every_command_reports_user_errors_on_one_line(trained, corpus, tmp_path):
  rows = ["| command | error | exit | message |", "|---|---|---|---|"]
  cases = _cases(trained[0], corpus, tmp_path)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the subprocesses, two at a time
    outputs = list(pool.map(lambda case: _run(case[0], *case[2], env=case[3]), cases))
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
  table = "\n".join(rows) + "\n"
  if os.environ.get("CDM_JAX_ERROR_TABLE"):
    pathlib.Path(os.environ["CDM_JAX_ERROR_TABLE"]).write_text(table)
