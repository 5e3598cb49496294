"""The contextual read-out decoder: its training noise against float64 NumPy, its FLOPs against its
own parameters, that untrained it decodes as the tied read-out, that training teaches it context,
and that a workdir samples with it."""

import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.models import builders
from cdm_jax.training import flops
from cdm_jax import sampling
from cdm_jax.models import contextual_decoder
from cdm_jax.posttrain import readout
from cdm_jax.sampling import artifacts
from cdm_jax.training import fit
from cdm_jax.core import rounding
from conftest import ROOT, trained_config


def _small_model(**changes):
  config = builders.model_config(trained_config("unused"))
  return dataclasses.replace(config, **changes)


def test_training_noise_is_z_t_over_gamma_t_in_float64():
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=(3, 5, 4))
  eps = rng.normal(size=(3, 5, 4))
  schedule = builders.make_schedule(trained_config("unused"))
  t = np.array([0.0, 0.35, 0.7])
  log_snr = np.asarray(schedule.log_snr(jnp.asarray(t, jnp.float32)), np.float64)
  gamma = np.sqrt(1.0 / (1.0 + np.exp(-log_snr)))
  sigma = np.sqrt(1.0 / (1.0 + np.exp(log_snr)))
  z_t = gamma[:, None, None] * x0 + sigma[:, None, None] * eps
  got = readout.noisy_inputs(jnp.asarray(x0, jnp.float32), jnp.asarray(log_snr, jnp.float32),
                             jnp.asarray(eps, jnp.float32))
  np.testing.assert_allclose(np.asarray(got, np.float64), z_t / gamma[:, None, None], rtol=1e-5,
                             atol=1e-5)


def test_flops_count_every_matmul_of_the_module():
  model = _small_model()
  module = contextual_decoder.ContextualDecoder(contextual_decoder.decoder_model_config(model, contextual_decoder.ReadoutConfig()))
  table = jnp.zeros((model.vocab_size, model.embed_dim))
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, model.seq_len, model.embed_dim)),
                       table, jnp.zeros((model.vocab_size,)))
  kernels = sum(np.prod(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                if path[-1].key == "kernel")
  tokens = 6 * model.seq_len
  attention = 2 * 2 * model.seq_len * model.width * 2  # two products per layer, 2 layers
  forward = tokens * (2 * kernels + attention + 2 * model.embed_dim * model.vocab_size)
  assert flops.readout_decoder_train_flops(model, num_layers=2, batch_size=6) == 3 * forward


@pytest.mark.slow
def test_untrained_it_decodes_as_the_tied_readout():
  model = _small_model()
  module = contextual_decoder.ContextualDecoder(contextual_decoder.decoder_model_config(model, contextual_decoder.ReadoutConfig()))
  keys = jax.random.split(jax.random.PRNGKey(1), 4)
  table = jax.random.normal(keys[0], (model.vocab_size, model.embed_dim))
  bias = jax.random.normal(keys[1], (model.vocab_size,))
  x = jax.random.normal(keys[2], (3, model.seq_len, model.embed_dim))
  params = module.init(keys[3], x, table, bias)
  got = jnp.argmax(module.apply(params, x, table, bias), axis=-1)
  np.testing.assert_array_equal(got, rounding.decode(x, table, bias, "readout"))


@pytest.mark.slow
def test_training_teaches_it_to_read_the_context():
  """Sequences repeat one token; under heavy noise a position alone is often misread, and the
  trained decoder, which can pool the sequence, must beat the tied read-out by a wide margin."""
  model = _small_model(vocab_size=8, seq_len=6, embed_dim=4)
  config = contextual_decoder.ReadoutConfig(steps=150, batch_size=32, learning_rate=3e-3, max_t=1.0)
  module = contextual_decoder.ContextualDecoder(contextual_decoder.decoder_model_config(model, config))
  table = jax.random.normal(jax.random.PRNGKey(0), (8, 4))
  table = table / jnp.linalg.norm(table, axis=-1, keepdims=True) * 2.0
  bias = jnp.zeros((8,))
  schedule = builders.make_schedule(trained_config("unused"))
  params = module.init(jax.random.PRNGKey(1), jnp.zeros((1, 6, 4)), table, bias)
  tx = builders.adamw_cosine(peak_learning_rate=config.learning_rate, warmup_steps=10,
                             total_steps=config.steps, grad_clip_norm=1.0, weight_decay=0.0)
  rng = np.random.default_rng(0)
  next_batch = lambda _: jnp.asarray(np.repeat(rng.integers(0, 8, (32, 1)), 6, axis=1))
  params, fitted = fit.fit(readout.make_loss(module, schedule, config), params, tx, next_batch,
                           num_steps=config.steps, key=jax.random.PRNGKey(100),
                           frozen=(table, bias))
  assert fitted["steps"] == config.steps and fitted["history"][-1]["step"] == config.steps
  tokens = jnp.asarray(np.repeat(rng.integers(0, 8, (256, 1)), 6, axis=1))
  noise = jax.random.normal(jax.random.PRNGKey(7), (256, 6, 4))
  y = readout.noisy_inputs(table[tokens], jnp.full((256,), -1.0), noise)  # sigma / gamma ~ 1.65
  alone = float(jnp.mean(rounding.decode(y, table, bias, "readout") == tokens))
  contextual = float(jnp.mean(jnp.argmax(module.apply(params, y, table, bias), -1) == tokens))
  assert contextual > alone + 0.2, (alone, contextual)


def test_a_workdir_samples_with_its_trained_decoder(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  with pytest.raises(ValueError, match="cdm-readout"):
    sampling.load(str(workdir)).sample(2, decoder="contextual")
  config = contextual_decoder.ReadoutConfig(steps=4, batch_size=8)
  meta = readout.train(str(workdir), config)
  recorded = json.loads((workdir / artifacts.DECODER_DIR / "decoder.json").read_text())
  model = builders.model_config(builders.load_config(str(workdir)))
  assert recorded["flops"] == meta["flops"] == 4 * flops.readout_decoder_train_flops(
      model, num_layers=2, batch_size=8)
  generator = sampling.load(str(workdir))
  assert generator.readout_decoder.meta["checkpoint_step"] == generator.step
  texts = generator.sample(3, seed=0, decoder="contextual")
  assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
  # Known tokens stay verbatim whatever the decoder reads.
  continued = generator.sample(2, seed=0, prefix="the cat", decoder="contextual")
  assert all(text.startswith("the cat") for text in continued), continued
  # The contextual path reads the same final estimate: untrained, it samples the tied read-out's
  # tokens exactly.
  trained_decoder = generator.readout_decoder
  untrained = trained_decoder.module.init(
      jax.random.PRNGKey(0), jnp.zeros((1, model.seq_len, model.embed_dim)),
      jnp.zeros((model.vocab_size, model.embed_dim)), jnp.zeros((model.vocab_size,)))
  generator.readout_decoder = dataclasses.replace(trained_decoder, params=untrained)
  np.testing.assert_array_equal(generator.sample_tokens(3, seed=0, decoder="contextual"),
                                generator.sample_tokens(3, seed=0))
  generator.readout_decoder = trained_decoder
  generator.step += 1  # a decoder trained for another checkpoint is refused, compiled or not
  with pytest.raises(ValueError, match="trained for checkpoint"):
    generator.sample(3, seed=0, decoder="contextual")


def test_the_cli_refuses_a_noise_level_outside_the_schedule(tmp_path):
  result = subprocess.run([sys.executable, "-m", "cdm_jax.cli.readout", f"--workdir={tmp_path}",
                           "--max_t=1.5"], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.startswith("error: max_t must lie in [0, 1]"), result.stderr[-2000:]


def test_the_cli_trains_a_decoder_and_prints_its_record(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  result = subprocess.run([sys.executable, "-m", "cdm_jax.cli.readout", f"--workdir={workdir}",
                           "--steps=3", "--batch_size=4", "--warmup_steps=1"], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout)
  assert printed == json.loads((workdir / artifacts.DECODER_DIR / "decoder.json").read_text())
  assert printed["checkpoint_step"] == 20 and [m["step"] for m in printed["metrics"]][-1] == 3
