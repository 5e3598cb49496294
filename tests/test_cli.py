"""The command-line entry points as a user runs them: subprocesses on a tiny trained workdir."""

import json
import math
import os
import subprocess
import sys
import types

import numpy as np

import cdm_jax
from cdm_jax import evaluate
from cdm_jax.data import pipeline, tokenizer as tokenizer_lib

from conftest import ROOT  # tests/ is on sys.path (pytest's default import mode)


def run_module(module, *args, env=None, timeout=600):
  result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def test_sample_cli_prints_and_writes_the_generators_samples(trained, tmp_path):
  workdir, _ = trained
  output = tmp_path / "samples.txt"
  stdout = run_module("cdm_jax.generate", f"--workdir={workdir}", "--num_samples=3", "--steps=4",
                      "--seed=1", "--sampler=ddpm", f"--output={output}")
  expected = cdm_jax.load(str(workdir)).sample(num_samples=3, steps=4, sampler="ddpm", seed=1)
  assert stdout == "\n".join(expected) + "\n"
  assert output.read_text(encoding="utf-8") == stdout


def test_evaluate_cli_prints_strict_json_and_writes_the_same(trained, tmp_path):
  workdir, _ = trained
  stdout = run_module("cdm_jax.evaluate", f"--workdir={workdir}", "--num_samples=12", "--steps=4",
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
  # `cdm_jax.sample` is the CLI's earlier name, kept as an alias of `cdm_jax.generate`.
  code, stderr = _fails("cdm_jax.sample", f"--workdir={tmp_path}")
  assert code == 2 and stderr.startswith("error: No config.json") and "Traceback" not in stderr
  workdir, _ = trained
  code, stderr = _fails("cdm_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
                        "--config.model.width=48")
  assert code == 2 and "Traceback" not in stderr and "Exception" not in stderr, stderr[-2000:]
  assert "model.width: 32 -> 48" in stderr
  code, stderr = _fails("cdm_jax.evaluate", f"--workdir={workdir}", "--guidance_scale=2")
  assert code == 2 and stderr.startswith("error: --guidance_scale needs a condition"), stderr


def test_multihost_flags_join_a_run_only_when_asked(monkeypatch):
  """`cli.join_if_asked` (training and sampling CLIs): nothing without the flags; the explicit
  coordinator, process count and id as given; --multihost alone leaves detection to JAX."""
  from cdm_jax import cli, distributed  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(distributed, "initialize", lambda *args: calls.append(args))
  flags = lambda **kw: types.SimpleNamespace(**{"multihost": False, "coordinator_address": None,
                                                "num_processes": None, "process_id": None, **kw})
  cli.join_if_asked(flags())
  assert not calls
  cli.join_if_asked(flags(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1))
  cli.join_if_asked(flags(multihost=True))
  assert calls == [("127.0.0.1:1234", 2, 1), (None, None, None)]
