"""End to end with configs/tiny.py: train, resume, sample, errors."""

import json
import pathlib
import runpy
import subprocess
import sys

import chex
import numpy as np
import pytest

import cdm_jax
from cdm_jax import checkpointing, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat ran on under mat log big small red blue green tree house bird".split()


def tiny_config(corpus_path, **train_overrides):
  config = runpy.run_path(str(ROOT / "configs/tiny.py"))["get_config"]()
  config.data.path = str(corpus_path)
  config.train.update(train_overrides)
  return config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
  path.write_text("\n".join(" ".join(rng.choice(WORDS, rng.integers(2, 7))) for _ in range(600)))
  return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  metrics = train.train_and_evaluate(tiny_config(corpus), str(workdir))
  return workdir, metrics


def test_training_writes_everything(trained):
  workdir, metrics = trained
  assert metrics["step"] == 20 and np.isfinite(metrics["loss"])
  for name in ["config.json", "tokenizer.model", "metrics.jsonl", "last_metrics.json"]:
    assert (workdir / name).is_file(), name
  assert sorted(p.name for p in (workdir / "samples").iterdir()) == ["step_00000010.txt", "step_00000020.txt"]
  assert list((workdir / "tensorboard").iterdir())
  assert checkpointing.make_manager(str(workdir)).latest_step() == 20
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"valid_bound_total_nats", "valid_bound_bits", "tokens_per_second"} <= set().union(*logged)


def test_resume_continues_exactly(corpus, tmp_path):
  straight = train.train_and_evaluate(tiny_config(corpus, eval_every_steps=0, sample_every_steps=0),
                                      str(tmp_path / "straight"))
  split_dir = str(tmp_path / "split")
  first = train.train_and_evaluate(
      tiny_config(corpus, eval_every_steps=0, sample_every_steps=0, stop_at_step=10), split_dir)
  assert first["step"] == 10
  second = train.train_and_evaluate(tiny_config(corpus, eval_every_steps=0, sample_every_steps=0), split_dir)
  assert second["step"] == 20
  steps = [json.loads(line)["step"] for line in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
  assert steps == [5, 10, 15, 20]  # the second run started at 10, not 0
  a = cdm_jax.load(str(tmp_path / "straight"), use_ema=False).params
  b = cdm_jax.load(split_dir, use_ema=False).params
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
  assert straight["loss"] == pytest.approx(second["loss"], rel=1e-5)


def test_generator_same_seed_same_text_on_any_device_count(trained):
  workdir, _ = trained
  one = cdm_jax.load(str(workdir), num_devices=1)
  texts = one.sample(num_samples=5, steps=6, seed=3)
  assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
  assert one.sample(num_samples=5, steps=6, seed=3) == texts
  assert cdm_jax.load(str(workdir), num_devices=2).sample(num_samples=5, steps=6, seed=3) == texts
  assert one.step == 20
  fast = cdm_jax.load(str(workdir), matmul_dtype="bfloat16")  # the float32-trained parameters
  assert fast.model.config.matmul_dtype == "bfloat16"
  assert fast.sample(num_samples=5, steps=6, seed=3) == fast.sample(num_samples=5, steps=6, seed=3)
  with pytest.raises(ValueError, match="num_samples"):
    one.sample(num_samples=0)


def test_non_finite_loss_stops_with_the_step(corpus, tmp_path):
  config = tiny_config(corpus, learning_rate=1e30, grad_clip_norm=0.0, warmup_steps=1,
                       eval_every_steps=0, sample_every_steps=0, log_every_steps=20)
  with pytest.raises(FloatingPointError, match=r"Non-finite loss at step \d+"):
    train.train_and_evaluate(config, str(tmp_path))


def test_cli_rejects_unknown_config_key(corpus, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "cdm_jax.main", f"--config={ROOT / 'configs/tiny.py'}",
       f"--workdir={tmp_path}", f"--config.data.path={corpus}", "--config.train.bogus_key=1"],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode != 0 and "bogus_key" in result.stderr


def test_toy_denoise_memorises_training_sequences():
  toy = runpy.run_path(str(ROOT / "experiments/toy_denoise.py"))
  result = toy["run"](num_steps=800, num_samples=32, log=False)
  assert result["losses"][-1] < 0.5 * result["losses"][0]
  assert result["exact_match_fraction"] >= 0.5
