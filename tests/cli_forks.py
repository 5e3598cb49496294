"""Runs many CLI invocations from one interpreter: python cli_forks.py CASES.json OUT.

CASES (JSON): a list of [command, [args...]]; command names a module of `cdm_jax.cli`. This
process imports JAX, Flax, Orbax and the CLIs once (a few seconds each time a CLI starts), then
forks one child per case, two at a time. A child is the command as a user runs it from the shell,
less the imports: its stdout and stderr go to OUT/I.out and OUT/I.err, it calls the CLI's `main`
with argv (and sys.argv) [cdm-COMMAND, *args], and its exit status goes to OUT/I.code. No JAX backend starts in
this process, so every child starts its own runtime. The cases must not change the environment
(PYTHONPATH, ...): tests/test_error_contract.py runs those as processes of their own.
"""

import importlib
import json
import os
import pathlib
import sys
import traceback

COMMANDS = ("train", "generate", "evaluate", "distill", "readout", "prepare", "compile")


def _child(command: str, args: list[str], out: pathlib.Path, index: int):
  for fd, name in ((1, f"{index}.out"), (2, f"{index}.err")):
    target = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(target, fd)
    os.close(target)
  code = 0
  try:
    sys.argv = [f"cdm-{command}", *args]  # ml_collections' config flags read their overrides here
    importlib.import_module(f"cdm_jax.cli.{command}").main(sys.argv)
  except SystemExit as exit_:
    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
  except BaseException:  # pylint: disable=broad-except  # what an uncaught error would print
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def main():
  cases = json.loads(pathlib.Path(sys.argv[1]).read_text())
  out = pathlib.Path(sys.argv[2])
  out.mkdir(parents=True, exist_ok=True)
  # pylint: disable=g-import-not-at-top,unused-import
  import jax
  import flax.linen
  import optax
  import orbax.checkpoint
  import cdm_jax
  from cdm_jax.training import train
  for command in COMMANDS:
    importlib.import_module(f"cdm_jax.cli.{command}")
  running = {}
  pending = list(enumerate(cases))
  while pending or running:
    while pending and len(running) < 2:
      index, (command, args) = pending.pop(0)
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(command, args, out, index)
      running[pid] = index
    pid, status = os.wait()
    (out / f"{running.pop(pid)}.code").write_text(str(os.waitstatus_to_exitcode(status)))


if __name__ == "__main__":
  main()
