"""The command-line entry points as a user runs them: subprocesses on a tiny trained workdir."""

import json
import math
import os
import signal
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

import cdm_jax
from cdm_jax.evaluation import evaluate
from cdm_jax.data import pipeline, tokenizer as tokenizer_lib

from conftest import ROOT  # tests/ is on sys.path (pytest's default import mode)

pytestmark = pytest.mark.slow  # trains, runs CLIs or several processes


def run_module(module, *args, env=None, timeout=300):
  """stdout of `python -m module args`; a run past `timeout` fails with every thread's stack."""
  process = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})})
  try:
    stdout, stderr = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.send_signal(signal.SIGABRT)  # the fault handler prints each thread's Python stack
    stdout, stderr = process.communicate()
    pytest.fail(f"{module} ran past {timeout} s; its stacks:\n{stderr[-8000:]}")
  assert process.returncode == 0, stderr[-4000:]
  return stdout


def test_sample_cli_prints_and_writes_the_generators_samples(trained, tmp_path):
  workdir, _ = trained
  output = tmp_path / "samples.txt"
  stdout = run_module("cdm_jax.cli.generate", f"--workdir={workdir}", "--num_samples=3", "--steps=4",
                      "--seed=1", "--sampler=ddpm", f"--output={output}")
  expected = cdm_jax.load(str(workdir)).sample(num_samples=3, steps=4, sampler="ddpm", seed=1)
  assert stdout == "\n".join(expected) + "\n"
  assert output.read_text(encoding="utf-8") == stdout


def test_evaluate_cli_prints_strict_json_and_writes_the_same(trained, tmp_path):
  workdir, _ = trained
  stdout = run_module("cdm_jax.cli.evaluate", f"--workdir={workdir}", "--num_samples=12", "--steps=4",
                      "--judge_steps=10", env={"CDM_JAX_CACHE": str(tmp_path / "cache")})
  reject = lambda name: (_ for _ in ()).throw(AssertionError(f"non-JSON constant {name}"))
  result = json.loads(stdout, parse_constant=reject)
  written = list((workdir / "eval").glob("eval_*_4_*_n*_seed0.json"))
  assert len(written) == 1
  assert json.loads(written[0].read_text(), parse_constant=reject) == result

  config = cdm_jax.load(str(workdir)).config
  data = pipeline.prepare_data(config.data, str(workdir))
  n = min(12, len(data.valid_text) // 2)
  assert result["num_samples"] == n and result["steps"] == 4 and result["checkpoint_step"] == 20
  assert result["judge"]["steps"] == 10
  for name in ("diffusion", "ar_baseline", "real"):
    scored = result[name]
    assert scored["judge_ppl"] > 1 and 0 <= scored["empty_fraction"] <= 1, name
    assert math.isclose(scored["judge_ppl_ratio"], scored["judge_ppl"] / result["judge_ppl_real"],
                        rel_tol=1e-9), name
  assert result["judge_ppl_ratio"] == result["diffusion"]["judge_ppl_ratio"]
  assert len(result["examples"]["diffusion"]) == min(10, n)

  # likelihood_on_valid: the tightest of the capped bounds, over the rows' real tokens.
  likelihood = result["likelihood"]
  bounds = likelihood["bound_by_log_snr_max"]
  assert set(bounds) == {str(cap) for cap in evaluate.LOG_SNR_CAPS}
  assert likelihood["diffusion_bound_nats_per_token"] == min(bounds.values())
  assert bounds[likelihood["bound_log_snr_max"]] == min(bounds.values())
  assert math.isclose(likelihood["diffusion_bound_bits_per_token"],
                      likelihood["diffusion_bound_nats_per_token"] / math.log(2), rel_tol=1e-9)
  batch = config.train.batch_size
  rows = data.valid[:min(16, len(data.valid) // batch) * batch]
  assert likelihood["valid_sequences"] == len(rows)
  assert likelihood["valid_tokens"] == int(np.sum(rows[:, 1:] != tokenizer_lib.PAD_ID))
  assert 0 < likelihood["judge_nll_nats_per_token"] < likelihood["diffusion_bound_nats_per_token"]


def _fails(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
  return result.returncode, result.stderr


def test_cli_errors_are_one_line_and_exit_2(trained, tmp_path):
  code, stderr = _fails("cdm_jax.cli.generate", f"--workdir={tmp_path}")
  assert code == 2 and stderr.startswith("error: No config.json") and "Traceback" not in stderr
  workdir, _ = trained
  code, stderr = _fails("cdm_jax.cli.train", "--config=configs/tiny.py", f"--workdir={workdir}",
                        "--config.model.width=48")
  assert code == 2 and "Traceback" not in stderr and "Exception" not in stderr, stderr[-2000:]
  assert "model.width: 32 -> 48" in stderr
  code, stderr = _fails("cdm_jax.cli.evaluate", f"--workdir={workdir}", "--guidance_scale=2")
  assert code == 2 and stderr.startswith("error: --guidance_scale needs a condition"), stderr


def test_multihost_flags_join_a_run_only_when_asked(monkeypatch):
  """`cli.join_if_asked` (training and sampling CLIs): nothing without the flags; the explicit
  coordinator, process count and id as given; --multihost alone leaves detection to JAX."""
  from cdm_jax.cli import common as cli  # pylint: disable=g-import-not-at-top
  from cdm_jax.runtime import distributed
  calls = []
  monkeypatch.setattr(distributed, "initialize", lambda *args: calls.append(args))
  flags = lambda **kw: types.SimpleNamespace(**{"multihost": False, "coordinator_address": None,
                                                "num_processes": None, "process_id": None, **kw})
  cli.join_if_asked(flags())
  assert not calls
  cli.join_if_asked(flags(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1))
  cli.join_if_asked(flags(multihost=True))
  assert calls == [("127.0.0.1:1234", 2, 1), (None, None, None)]


def test_generate_cli_conditional_flags_end_to_end(trained, tmp_path):
  """--prefix/--suffix, --template, --source and --raw_params through the real command line, each
  against the same call of the Python API."""
  workdir, _ = trained
  common = (f"--workdir={workdir}", "--num_samples=2", "--steps=3", "--seed=2")
  g = cdm_jax.load(str(workdir))
  both = run_module("cdm_jax.cli.generate", *common, "--prefix=the cat", "--suffix=a mat",
                    "--gap_length=3")
  assert both.splitlines() == g.sample(2, seed=2, num_steps=3, prefix="the cat", suffix="a mat",
                                       gap_length=3)
  assert all(line.startswith("the cat") and line.endswith("a mat") for line in both.splitlines())
  filled = run_module("cdm_jax.cli.generate", *common, "--template=the ___:2 sat", "--mbr=2")
  assert filled.splitlines() == g.infill("the ___:2 sat", 2, seed=2, num_steps=3, mbr=2)
  targets = run_module("cdm_jax.cli.generate", *common, "--source=the cat", "--source=a dog")
  assert targets.splitlines() == g.generate(["the cat", "a dog"], seed=2, num_steps=3)
  raw = run_module("cdm_jax.cli.generate", *common, "--raw_params")
  assert raw.splitlines() == cdm_jax.load(str(workdir), use_ema=False).sample(2, seed=2,
                                                                               num_steps=3)
  code, stderr = _fails("cdm_jax.cli.generate", *common, "--prefix=a", "--template=b ___")
  assert code == 2 and stderr == "error: Give one of --source, --template, or --prefix/--suffix.\n"


def test_evaluate_cli_runs_the_infill_task(trained, tmp_path):
  workdir, _ = trained
  stdout = run_module("cdm_jax.cli.evaluate", f"--workdir={workdir}", "--task=infill",
                      "--num_examples=4", "--steps=3", "--baseline=false",
                      env={"CDM_JAX_CACHE": str(tmp_path / "cache")})
  result = json.loads(stdout)
  assert result["result_file"] == "task_infill_n4_seed0_num_steps3.json"
  assert json.loads((workdir / "eval" / result["result_file"]).read_text()) == result
  assert result["sample_overrides"] == {"num_steps": 3}


def test_load_reads_the_requested_checkpoint_and_the_raw_parameters(trained):
  workdir, _ = trained
  newest, first = cdm_jax.load(str(workdir)), cdm_jax.load(str(workdir), step=10)
  assert (newest.step, first.step) == (20, 10)
  leaves = lambda g: jax.tree.leaves(g.params)
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(newest), leaves(first)))
  raw = cdm_jax.load(str(workdir), use_ema=False)
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(newest), leaves(raw)))
