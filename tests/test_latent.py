"""The latent encoder (m != n): the text autoencoder's shapes, masks and augmentations, its training
stage, and the diffusion LM, samplers and Python API over its latents."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from cdm_jax.core import diffusion, samplers
from cdm_jax.models import builders
from cdm_jax.models.autoencoder import (AutoencoderConfig, TextAutoencoder, attention_keep,
                                        augment_latents, augmentation_draws, layer_normalize)
from cdm_jax.training import autoencoder as ae_stage
from cdm_jax.training import flops
from cdm_jax.evaluation import program_stats
from cdm_jax.evaluation.context_use import context_accuracy
from cdm_jax.runtime import config_files

AE = AutoencoderConfig(vocab_size=40, seq_len=16, latent_dim=8, ratio=4, width=32, num_heads=2,
                       mlp_dim=64, encoder_layers=1, resampler_layers=1, decoder_layers=1,
                       mask_rate=0.3, noise_delta=0.7, latent_dropout=0.4)  # COSMOS's values


def latent_config(corpus_path, **autoencoder):
  config = config_files.load(str(ROOT / "configs/tiny_latent.py"))
  config.data.path = str(corpus_path)
  config.autoencoder.update(autoencoder)
  return config


def test_shapes_for_m_not_n():
  model = TextAutoencoder(AE)
  tokens = jnp.arange(3 * 16).reshape(3, 16) % 40
  params = model.init(jax.random.PRNGKey(0), tokens)
  z = model.apply(params, tokens, method="encode")
  assert z.shape == (3, 4, 8)
  np.testing.assert_allclose(np.mean(z, -1), 0.0, atol=1e-5)  # normalized before any noise
  np.testing.assert_allclose(np.var(z, -1), 1.0, rtol=1e-3)
  assert model.apply(params, z, method="decode").shape == (3, 16, 40)
  draws = augmentation_draws(jax.random.PRNGKey(1), 3, AE)
  assert model.apply(params, tokens, draws).shape == (3, 16, 40)


def test_hidden_positions_do_not_reach_the_latents():
  """A position hidden from attention cannot move the latents; a visible one does."""
  model = TextAutoencoder(AE)
  tokens = jnp.arange(16)[None] % 40
  params = model.init(jax.random.PRNGKey(0), tokens)
  keep = jnp.ones((1, 16), bool).at[0, 5].set(False)
  encode = lambda t: model.apply(params, t, keep, method="encode")
  changed = tokens.at[0, 5].set(39)
  np.testing.assert_allclose(encode(tokens), encode(changed), atol=1e-6)
  other = tokens.at[0, 6].set(39)
  assert float(jnp.max(jnp.abs(encode(tokens) - encode(other)))) > 1e-3


def test_augmentations_match_numpy():
  draws = augmentation_draws(jax.random.PRNGKey(3), 64, AE)
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (64, 4, 8)), np.float64)
  got = np.asarray(augment_latents(jnp.asarray(z, jnp.float32), draws, AE), np.float64)
  half = np.asarray(draws.noise_half)[:, None, None]
  delta = AE.noise_delta
  noisy = np.where(half, delta * z + np.sqrt(1 - delta**2) * np.asarray(draws.noise, np.float64), z)
  keep = np.asarray(draws.dropout_u) >= AE.latent_dropout
  np.testing.assert_allclose(got, np.where(keep, noisy / (1 - AE.latent_dropout), 0.0), atol=1e-5)
  visible = np.asarray(attention_keep(draws, AE.mask_rate))
  expected = (np.asarray(draws.position_u) >= AE.mask_rate) | np.asarray(draws.noise_half)[:, None]
  np.testing.assert_array_equal(visible, expected)
  assert 0.2 < np.asarray(draws.noise_half).mean() < 0.8
  assert 0.2 < 1 - visible[~np.asarray(draws.noise_half)].mean() < 0.4  # ~30% hidden
  # The VP noise keeps unit variance for unit-variance latents.
  big = augmentation_draws(jax.random.PRNGKey(5), 4096, AE)
  unit = jax.random.normal(jax.random.PRNGKey(6), (4096, 4, 8))
  no_drop = AutoencoderConfig(**{**AE.__dict__, "latent_dropout": 0.0})
  out = np.asarray(augment_latents(unit, big, no_drop))
  assert abs(out[np.asarray(big.noise_half)].var() - 1.0) < 0.02


def test_layer_normalize_matches_numpy():
  z = np.random.default_rng(0).normal(3.0, 5.0, (5, 4, 8))
  expected = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(layer_normalize(jnp.asarray(z, jnp.float32)), expected, atol=1e-5)


def test_bad_ratio_is_a_clear_error():
  with pytest.raises(ValueError, match="ratio k=3"):
    AutoencoderConfig(seq_len=16, ratio=3)


def _model_and_params(config):
  model = builders.make_model(config)
  return model, builders.init_params(config, model)


@pytest.mark.slow  # trains for tens of seconds: the full suite's, not the fast tier's
def test_latent_diffusion_lm_runs_over_m_latents(corpus):
  config = latent_config(corpus)
  model, params = _model_and_params(config)
  tokens = jnp.ones((2, 16), jnp.int32)
  x0 = model.apply(params, tokens, method="embed")
  assert x0.shape == (2, 8, 16)
  out = model.apply(params, x0, jnp.zeros((2,)), method="denoise")
  assert out.x0_hat.shape == (2, 8, 16)
  assert model.apply(params, x0, method="decode_logits").shape == (2, 16, 32)
  with pytest.raises(ValueError, match="model.encoder='embedding'"):
    model.apply(params, method="readout_weights")
  # The loss: diffusion over the 8 latents, the anchor term and the accuracy over the 16 tokens.
  config.diffusion.anchor_weight = 0.5
  loss_config = builders.loss_config(config)
  inputs = diffusion.LossInputs(
      tokens=tokens, mask=jnp.ones((2, 16), bool), t=jnp.array([0.3, 0.7]), weight=jnp.ones(2),
      noise=jax.random.normal(jax.random.PRNGKey(0), (2, 2, 8, 16)), self_cond=jnp.array(True))
  _, (metrics, per_example) = diffusion.training_losses(model, params, inputs,
                                                        builders.make_schedule(config), loss_config)
  assert float(metrics["tokens"]) == 16 and float(metrics["readout_tokens"]) == 32
  assert float(metrics["accuracy_tokens"]) == 32 and per_example.shape == (2,)
  assert float(metrics["anchor_loss"]) > 0
  # k = 8 over 16 tokens: m = 2 latents, although 8 does not divide m.
  config.model.latent_ratio = 8
  model, params = _model_and_params(config)
  assert model.apply(params, tokens, method="embed").shape == (2, 2, 16)


def test_latent_config_refuses_token_level_settings(corpus):
  config = latent_config(corpus)
  config.diffusion.rounding_weight = 1.0
  with pytest.raises(ValueError, match="rounding_weight"):
    builders.loss_config(config)
  config = latent_config(corpus)
  config.condition.update(prefix=0.2, source=0.2)
  with pytest.raises(ValueError, match="not both"):
    builders.loss_config(config)
  config = latent_config(corpus)
  config.model.output = "logits"
  with pytest.raises(ValueError, match="latent encoder has none"):
    builders.make_model(config)


@pytest.mark.slow  # trains for tens of seconds: the full suite's, not the fast tier's
def test_frozen_encoder_takes_no_update(corpus):
  """A train step moves the denoiser and leaves every autoencoder parameter as it was (no weight
  decay either), in the parameters and their EMA, and keeps no optimizer state for it."""
  from cdm_jax.runtime import parallel
  from cdm_jax.training import steps
  config = latent_config(corpus)
  config.train.weight_decay = 0.1
  config.diffusion.anchor_weight = 1.0
  model = builders.make_model(config)
  tx = builders.make_model_optimizer(config)
  mesh = parallel.make_mesh(1)
  state = builders.init_state(config, model, tx)
  before = jax.device_get(state.params)
  step = steps.make_train_step(model, tx, builders.make_schedule(config),
                               builders.loss_config(config), mesh, global_batch=4,
                               ema_decay=0.9)
  tokens = jnp.tile(jnp.arange(16)[None] % 32, (4, 1))
  for _ in range(2):  # the warm-up's learning rate is 0 at step 0
    state, _ = step(state, tokens, tokens != 0)
  after = jax.device_get(state.params)
  encoder = lambda p: jax.tree.leaves(p["params"]["embedder"])
  for a, b, c in zip(encoder(before), encoder(after), encoder(jax.device_get(state.ema_params))):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)  # the EMA copies it, with no rounding drift
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["params"]["denoiser"]),
                                                     jax.tree.leaves(after["params"]["denoiser"]))]
  assert any(moved)
  opt_leaves = sum(x.size for x in jax.tree.leaves(state.opt_state))
  denoiser_size = sum(x.size for x in jax.tree.leaves(before["params"]["denoiser"]))
  encoder_size = sum(x.size for x in encoder(before))
  assert opt_leaves < 2 * denoiser_size + encoder_size  # Adam's two moments, the denoiser's only


def test_flops_of_the_autoencoder_match_xla():
  """The analytic forward FLOPs agree with XLA's count of the compiled encode and decode (which
  adds the element-wise work)."""
  model = TextAutoencoder(AE)
  tokens = jnp.zeros((8, 16), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), tokens)
  expected = flops.autoencoder_forward_flops(AE)

  def counted(fn, *args):
    return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]
  encode = counted(lambda p, t: model.apply(p, t, method="encode"), params, tokens)
  z = jnp.zeros((8, 4, 8))
  decode = counted(lambda p, x: model.apply(p, x, method="decode"), params, z)
  # XLA also counts the element-wise work (norms, softmax, GELU): at width 32 about 11% more than
  # the matmuls alone, which the analytic count holds exactly (the test below).
  assert 1.0 <= encode / (8 * expected["encode"]) < 1.2
  assert 1.0 <= decode / (8 * expected["decode"]) < 1.2


@pytest.mark.parametrize("config_file", ["configs/wordnet_latent.py", "configs/tiny_latent.py"])
def test_autoencoder_flops_are_every_matmul_at_the_configs_sizes(config_file):
  """At the configs' own sizes (width 128 and 32), the analytic encode and decode FLOPs equal the
  matmul FLOPs of the traced programs exactly (a resampler's key/value projection counted twice
  was 4% of the autoencoder's FLOPs and within the compiled-count test's tolerance)."""
  config = config_files.load(ROOT / config_file, {"data.path": "unused.txt"})
  ae = builders.autoencoder_config(config)
  model = TextAutoencoder(ae)
  tokens = jax.ShapeDtypeStruct((1, ae.seq_len), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, ae.seq_len),
                                                                               jnp.int32)))
  latents = jax.ShapeDtypeStruct((1, ae.num_latents, ae.latent_dim), jnp.float32)
  expected = flops.autoencoder_forward_flops(ae)
  assert program_stats.matmul_flops(lambda p, t: model.apply(p, t, method="encode"), params,
                                    tokens) == expected["encode"]
  assert program_stats.matmul_flops(lambda p, z: model.apply(p, z, method="decode"), params,
                                    latents) == expected["decode"]


@pytest.fixture(scope="module")
def autoencoder_dir(corpus, tmp_path_factory):
  """A workdir whose autoencoder stage ran to its end (tiny_latent.py: 600 steps), with what
  `train` returned."""
  from cdm_jax.data import pipeline
  from cdm_jax.runtime import parallel
  config = latent_config(corpus)
  workdir = tmp_path_factory.mktemp("autoencoder")
  data = pipeline.prepare_data(config.data, str(workdir))
  params, report = ae_stage.train(config, str(workdir), data, parallel.make_mesh(None))
  return workdir, params, report


@pytest.mark.slow
def test_autoencoder_stage_reconstructs_and_keeps_its_statistics(autoencoder_dir, corpus):
  """600 steps reach >= 99% held-out token accuracy; the standardization statistics and the
  report round-trip through the final checkpoint."""
  from cdm_jax.runtime import parallel
  workdir, params, report = autoencoder_dir
  assert report["valid"]["token_accuracy"] >= 0.99, report
  std = np.asarray(params["latent_std"])
  assert std.shape == (16,) and np.all(std > 0) and not np.allclose(std, 1.0)
  restored, again = ae_stage.load_final(latent_config(corpus), str(workdir),
                                        parallel.make_mesh(None))
  assert again == json.loads(json.dumps(report))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored["params"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_an_interrupted_autoencoder_stage_resumes_bit_identically(corpus, tmp_path):
  """A stage stopped at step 20 and resumed ends with the same parameters as an uninterrupted
  one; the stopped stage leaves its checkpoint and no final export."""
  from cdm_jax.data import pipeline
  from cdm_jax.runtime import parallel
  short = dict(num_steps=40, checkpoint_every_steps=20, stats_batches=1)
  config = latent_config(corpus, **short)
  mesh = parallel.make_mesh(None)
  whole_dir, split_dir = tmp_path / "whole", tmp_path / "split"
  data = pipeline.prepare_data(config.data, str(whole_dir))
  params, _ = ae_stage.train(config, str(whole_dir), data, mesh)
  data = pipeline.prepare_data(config.data, str(split_dir))
  stopped = latent_config(corpus, stop_at_step=20, **short)
  assert ae_stage.train(stopped, str(split_dir), data, mesh) is None
  assert not (split_dir / "autoencoder/final").exists()
  assert (split_dir / "autoencoder/checkpoints/20").is_dir()
  resumed, _ = ae_stage.train(config, str(split_dir), data, mesh)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def latent_workdir(autoencoder_dir, corpus, tmp_path_factory):
  """A latent workdir trained for 20 steps on the finished autoencoder of `autoencoder_dir`."""
  import shutil
  from cdm_jax.training import train
  workdir = tmp_path_factory.mktemp("latent")
  shutil.copytree(autoencoder_dir[0] / "autoencoder", workdir / "autoencoder")
  metrics = train.train_and_evaluate(latent_config(corpus), str(workdir))
  return workdir, metrics


@pytest.mark.slow
def test_latent_workdir_trains_loads_and_samples_with_every_sampler(latent_workdir, corpus):
  import cdm_jax
  workdir, metrics = latent_workdir
  assert metrics["step"] == 20 and math.isfinite(metrics["loss"])
  assert (workdir / "autoencoder/final/autoencoder.json").is_file()
  generator = cdm_jax.load(str(workdir))
  for name in samplers.SAMPLERS.names():
    texts = generator.sample(3, seed=0, sampler=name, num_steps=4)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
  assert generator.sample(3, seed=1) == generator.sample(3, seed=1)
  tokens = generator.sample_tokens(5, seed=0, batch_size=2)
  np.testing.assert_array_equal(tokens, generator.sample_tokens(5, seed=0, batch_size=8))
  assert tokens.shape == (5, 16)
  # The context diagnostic reads a latent model: the decoder alone reads clean latents.
  from cdm_jax.data import encoding
  lines = corpus.read_text().splitlines()[:32]
  rows, _ = encoding.encode(generator.tokenizer, lines, 16, "truncate", "test")
  clean, noisy = context_accuracy(generator, jnp.asarray(rows), [0.01, 0.995])
  assert clean["accuracy_decoder_on_noisy"] > 0.6 > noisy["accuracy_decoder_on_noisy"] + 0.3
  assert math.isnan(clean["accuracy_no_network"])
  assert 0.0 <= clean["accuracy_foreign_context"] <= 1.0


@pytest.mark.slow
def test_checkpoints_leave_the_frozen_encoder_out_and_older_ones_still_load(
    latent_workdir, corpus, tmp_path, monkeypatch):
  """The train state's checkpoints hold the denoiser but not the frozen autoencoder, which loads
  from autoencoder/final; a workdir whose checkpoints hold it (as they did before) loads to the
  same model and resumes, its new checkpoints without it."""
  import shutil
  import cdm_jax
  from cdm_jax.runtime import checkpointing, parallel
  from cdm_jax.sampling import artifacts
  from cdm_jax.training import train
  workdir, _ = latent_workdir
  encoder_keys = lambda field: (field, "params", builders.FROZEN_ENCODER)
  assert checkpointing.has_saved(workdir / "checkpoints", 20, ("params", "params", "denoiser"))
  for field in ("params", "ema_params"):
    assert not checkpointing.has_saved(workdir / "checkpoints", 20, encoder_keys(field))
  new = cdm_jax.load(str(workdir))
  final = artifacts.load_autoencoder(latent_config(corpus), str(workdir), parallel.make_mesh(1))
  for a, b in zip(jax.tree.leaves(final["params"]),
                  jax.tree.leaves(new.params["params"][builders.FROZEN_ENCODER])):
    np.testing.assert_array_equal(a, b)

  old_dir = tmp_path / "old"
  shutil.copytree(workdir / "autoencoder", old_dir / "autoencoder")
  with monkeypatch.context() as patch:  # the earlier format: the whole state in every checkpoint
    patch.setattr(builders, "checkpoint_view", lambda config, state: state)
    train.train_and_evaluate(latent_config(corpus), str(old_dir))
  assert checkpointing.has_saved(old_dir / "checkpoints", 20, encoder_keys("ema_params"))
  old = cdm_jax.load(str(old_dir))
  for a, b in zip(jax.tree.leaves(old.params), jax.tree.leaves(new.params)):
    np.testing.assert_array_equal(a, b)
  assert old.sample(3, seed=0) == new.sample(3, seed=0)
  longer = latent_config(corpus)
  longer.train.num_train_steps = 30
  assert train.train_and_evaluate(longer, str(old_dir))["step"] == 30
  assert not checkpointing.has_saved(old_dir / "checkpoints", 30, encoder_keys("params"))


@pytest.mark.slow
def test_token_level_conditions_on_a_latent_model_are_one_line_errors(latent_workdir):
  import cdm_jax
  generator = cdm_jax.load(str(latent_workdir[0]))
  calls = [lambda: generator.sample(2, prefix="the cat"), lambda: generator.sample(2, suffix="mat"),
           lambda: generator.infill("the ___ sat", 2), lambda: generator.generate(["the cat"]),
           lambda: generator.sample(2, lengths=[3, 4])]
  for call in calls:
    with pytest.raises(ValueError, match="trained without conditions") as info:
      call()
    assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="clamp='none'"):
    generator.sample(2, clamp="soft")


def test_diffusion_flops_count_the_frozen_encoder(corpus):
  config = latent_config(corpus)
  latent = flops.diffusion_train_flops(config)
  ae = flops.autoencoder_forward_flops(builders.autoencoder_config(config))
  batch = config.train.batch_size
  config.diffusion.anchor_weight = 1.0
  anchored = flops.diffusion_train_flops(config)
  assert anchored["train"] - latent["train"] == pytest.approx(3 * batch * ae["decode"])
  tokens = config_files.load(str(ROOT / "configs/tiny.py"))
  tokens.model.update(conditioning=False)
  token_level = flops.diffusion_train_flops(tokens)
  assert latent["denoiser_forward"] < 0.6 * token_level["denoiser_forward"]  # 8 latents, not 16
  assert latent["train"] >= 3 * latent["denoiser_forward"] + batch * ae["encode"]


@pytest.mark.slow
def test_a_latent_model_distils_and_its_student_samples(latent_workdir, tmp_path):
  """Progressive distillation runs over the m latents; the student keeps the frozen autoencoder
  and samples through `cdm_jax.load(..., student=N)`."""
  import shutil
  import cdm_jax
  from cdm_jax.posttrain import distill
  workdir = tmp_path / "run"
  shutil.copytree(latent_workdir[0], workdir)
  config = distill.DistillConfig(target_steps=2, teacher_steps=4, steps_per_round=10,
                                 learning_rate=3e-4, checkpoint_every_steps=10,
                                 log_every_steps=5)
  record = distill.distill(str(workdir), config)
  assert record["step"] == 10 and math.isfinite(record["loss"])
  teacher = cdm_jax.load(str(workdir))
  student = cdm_jax.load(str(workdir), student=2)
  for a, b in zip(jax.tree.leaves(teacher.params["params"]["embedder"]),
                  jax.tree.leaves(student.params["params"]["embedder"])):
    np.testing.assert_array_equal(a, b)
  assert len(student.sample(3, seed=0)) == 3
