"""End to end with configs/tiny.py: train, resume, sample, errors."""

import json
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cdm_jax
from cdm_jax import sampling
from cdm_jax.core import diffusion, sample_options, schedules
from cdm_jax.models import DiffusionLM, ModelConfig, builders
from cdm_jax.runtime import checkpointing
from cdm_jax.runtime import parallel
from cdm_jax.training import steps
from cdm_jax.training import train

from conftest import ROOT, tiny_config, trained_config  # tests/ is on sys.path


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


def restore_everything(config, workdir):
  """(train state, data position, step) of the newest checkpoint in `workdir`."""
  model = builders.make_model(config)
  abstract = builders.abstract_state(config, model, builders.make_optimizer(config.train),
                                     parallel.make_mesh())
  manager = checkpointing.make_manager(str(workdir), async_save=False)
  try:
    return checkpointing.restore_latest(manager, abstract)
  finally:
    manager.close()


def test_resume_continues_exactly(corpus, trained, tmp_path):
  """A run split at step 10 ends in the same train state, bit for bit (parameters, Adam moments,
  EMA, step, RNG, learned time warp) and the same data position as the uninterrupted `trained`
  run, with evaluation, sampling and time warping on."""
  straight = trained[0]
  split_dir = tmp_path / "split"
  assert train.train_and_evaluate(trained_config(corpus, stop_at_step=10), str(split_dir))["step"] == 10
  assert train.train_and_evaluate(trained_config(corpus), str(split_dir))["step"] == 20
  steps = [json.loads(line)["step"] for line in (split_dir / "metrics.jsonl").read_text().splitlines()]
  assert steps == [5, 10, 10, 15, 20, 20]  # the second run started at 10 (train + eval lines)
  state_a, data_a, step_a = restore_everything(trained_config(corpus), straight)
  state_b, data_b, step_b = restore_everything(trained_config(corpus), split_dir)
  assert step_a == step_b == 20 and data_a == data_b
  assert float(np.sum(state_a.warp.bin_seen)) > 0  # the warp did learn
  chex.assert_trees_all_equal(state_a, state_b)
  lines = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  drop_time = lambda m: {k: v for k, v in m.items() if "second" not in k and k != "time"}
  assert [drop_time(m) for m in lines(straight)][-2:] == [drop_time(m) for m in lines(split_dir)][-2:]
  assert (straight / "samples/step_00000020.txt").read_text() == \
      (split_dir / "samples/step_00000020.txt").read_text()


def test_generator_same_seed_same_text_on_any_device_count(trained):
  workdir, _ = trained
  one = cdm_jax.load(str(workdir), num_devices=1)
  texts = one.sample(num_samples=5, steps=6, seed=3)
  assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
  assert one.sample(num_samples=5, steps=6, seed=3) == texts
  assert one.sample(num_samples=5, steps=6, seed=4) != texts
  assert cdm_jax.load(str(workdir), num_devices=2).sample(num_samples=5, steps=6, seed=3) == texts
  assert one.step == 20
  # One compiled function per setting, whichever way the setting is spelt.
  assert one.make_sample_fn(num_samples=5, steps=6) is one.make_sample_fn(
      one.sample_config.replace(num_samples=5, num_steps=6))
  with pytest.raises(ValueError, match="num_samples"):
    one.sample(num_samples=0)
  with pytest.raises(ValueError, match="steps must be >= 1"):
    one.sample(num_samples=2, steps=0)
  with pytest.raises(ValueError, match="clamp_temperature must be > 0"):
    one.sample(num_samples=2, clamp="soft", clamp_temperature=0.0)


def test_bfloat16_generator_tracks_the_float32_one(trained):
  """load(matmul_dtype="bfloat16") on float32-trained parameters: the same parameters, a denoiser
  within bf16 rounding of the float32 one (and not identical to it), mostly the same tokens."""
  workdir, _ = trained
  exact = cdm_jax.load(str(workdir))
  fast = cdm_jax.load(str(workdir), matmul_dtype="bfloat16")
  assert fast.model.config.matmul_dtype == "bfloat16"
  chex.assert_trees_all_equal(fast.params, exact.params)
  x_t = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 8))
  log_snr = jnp.array([-4.0, -1.0, 1.0, 4.0])
  out = [g.model.apply(g.params, x_t, log_snr, x_t, method="denoise").x0_hat for g in (exact, fast)]
  err = float(jnp.linalg.norm(out[1] - out[0]) / jnp.linalg.norm(out[0]))
  assert 0 < err < 3e-2, err
  tokens = [g.sample_tokens(num_samples=16, steps=6, seed=3, clamp="none") for g in (exact, fast)]
  assert np.mean(tokens[0] == tokens[1]) > 0.7, np.mean(tokens[0] == tokens[1])


def test_missing_workdir_pieces_are_clear_errors(trained, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a cdm_jax workdir"):
    cdm_jax.load(str(tmp_path))
  workdir, _ = trained
  (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match="No checkpoint under .*train first"):
    cdm_jax.load(str(tmp_path))


def _poison_step(monkeypatch, bad_step: int):
  """Makes the diffusion noise of optimizer step `bad_step` NaN (a fault injected on purpose)."""
  original = steps._loss_inputs  # pylint: disable=protected-access

  def poisoned(state, *args):
    inputs = original(state, *args)
    return inputs.replace(noise=jnp.where(state.step == bad_step, jnp.nan, inputs.noise))
  monkeypatch.setattr(steps, "_loss_inputs", poisoned)


@pytest.mark.slow
def test_nan_at_step_k_stops_naming_k_and_keeps_the_last_good_checkpoint(corpus, tmp_path,
                                                                          monkeypatch):
  _poison_step(monkeypatch, 7)
  config = tiny_config(corpus, num_train_steps=12, eval_every_steps=0, sample_every_steps=0,
                       log_every_steps=4, checkpoint_every_steps=5)
  with pytest.raises(FloatingPointError, match=r"Non-finite loss at step 7; .*checkpoint: 5\)"):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.make_manager(str(tmp_path)).latest_step() == 5


@pytest.mark.slow
def test_skip_nonfinite_skips_the_poisoned_step_and_counts_it(corpus, tmp_path, monkeypatch):
  _poison_step(monkeypatch, 7)
  config = tiny_config(corpus, num_train_steps=12, eval_every_steps=0, sample_every_steps=0,
                       log_every_steps=4, checkpoint_every_steps=12, skip_nonfinite=True)
  metrics = train.train_and_evaluate(config, str(tmp_path))
  logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  skipped = {row["step"]: row["skipped_nonfinite"] for row in logged if "skipped_nonfinite" in row}
  assert skipped == {4: 0.0, 8: 1.0, 12: 0.0} and metrics["step"] == 12
  assert all(np.isfinite(row["loss"]) for row in logged if "loss" in row)
  state, _, _ = restore_everything(config, tmp_path)
  assert int(state.step) == 12
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))


def test_cli_rejects_unknown_config_key(corpus, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "cdm_jax.cli.train", f"--config={ROOT / 'configs/tiny.py'}",
       f"--workdir={tmp_path}", f"--config.data.path={corpus}", "--config.train.bogus_key=1"],
      capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert result.returncode != 0 and "bogus_key" in result.stderr


def _toy_run(num_steps: int, num_samples: int) -> dict:
  """Eight fixed sequences over a 16-token vocabulary: trains, samples, and counts the samples that
  reproduce a training sequence exactly."""
  rng = np.random.default_rng(0)
  data = rng.integers(0, 16, size=(8, 8)).astype(np.int32)  # the whole "corpus"
  config = ModelConfig(vocab_size=16, seq_len=8, embed_dim=16, width=64, num_layers=2, num_heads=4,
                       mlp_dim=128)
  model = DiffusionLM(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1,)))
  tx = optax.adam(1e-2)
  mesh = parallel.make_mesh(1)
  schedule = schedules.get_schedule("cosine")
  step = steps.make_train_step(model, tx, schedule, diffusion.LossConfig(), mesh, global_batch=32,
                              ema_decay=0.99)
  state = steps.init_train_state(params, tx, jax.random.PRNGKey(1))
  losses, window = [], []
  for i in range(num_steps):
    batch = data[rng.integers(0, len(data), 32)]
    state, metrics = step(state, parallel.shard_batch(batch, mesh), parallel.shard_batch(batch >= 0, mesh))
    window.append(float(metrics["diffusion_loss"] / metrics["tokens"]))
    if (i + 1) % 50 == 0:
      losses.append(float(np.mean(window)))
      window = []
  sample_fn = sampling.make_sample_fn(model, schedule, mesh, sample_options.SampleConfig(
      num_samples=num_samples, num_steps=50, sampler="ddpm", clamp="none"))
  samples = np.asarray(sample_fn(state.ema_params, jax.random.PRNGKey(2)))
  matches = [(row == data).all(axis=1).any() for row in samples]
  return {"losses": losses, "exact_match_fraction": float(np.mean(matches))}


@pytest.mark.slow
def test_toy_denoise_memorises_training_sequences():
  result = _toy_run(num_steps=800, num_samples=32)
  assert result["losses"][-1] < 0.5 * result["losses"][0]
  assert result["exact_match_fraction"] >= 0.5


def test_fsdp_resumes_a_replicated_checkpoint_and_ends_where_it_would(corpus, trained, tmp_path):
  """Steps 0-10 replicated (the `trained` run's step-10 checkpoint), 10-20 with train.fsdp in two
  groups of two devices (mesh 2 x 2: sharded restore, eval, samples and save of a sharded state):
  the final EMA parameters equal the uninterrupted replicated run's."""
  workdir = tmp_path / "fsdp"
  shutil.copytree(trained[0], workdir, ignore=shutil.ignore_patterns("samples", "20"))
  (workdir / "last_metrics.json").unlink()
  config = trained_config(corpus, fsdp=True, fsdp_min_size=256, fsdp_axis_size=2)
  assert train.train_and_evaluate(config, str(workdir))["step"] == 20
  assert (workdir / "samples/step_00000020.txt").is_file()
  state_a, _, _ = restore_everything(trained_config(corpus), trained[0])
  state_b, _, step = restore_everything(trained_config(corpus), workdir)
  assert step == 20
  chex.assert_trees_all_close(state_b.ema_params, state_a.ema_params, atol=1e-4)
