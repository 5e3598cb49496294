"""The AR-feature encoder of the text autoencoder (autoencoder.features="ar"): the library's causal
LM, frozen, feeds the encoder; the decoder also regresses its states; its FLOPs count."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from cdm_jax.data import pipeline
from cdm_jax.evaluation import ar_model
from cdm_jax.models import builders
from cdm_jax.models.autoencoder import FEATURE_MODEL, AutoencoderConfig, TextAutoencoder
from cdm_jax.runtime import parallel
from cdm_jax.training import autoencoder as ae_stage
from cdm_jax.evaluation import program_stats
from cdm_jax.training import flops
from cdm_jax.runtime import config_files

LM_SIZES = dict(feature_width=32, feature_layers=1, feature_heads=2, feature_mlp_dim=64)
LM_STEPS = 5


def test_flops_of_the_ar_feature_encoder_match_xla():
  """Encode = the frozen LM's forward (its unused read-out compiled away) + the rest."""
  ae = AutoencoderConfig(vocab_size=40, seq_len=16, latent_dim=8, ratio=4, width=32, num_heads=2,
                         mlp_dim=64, encoder_layers=1, resampler_layers=1, decoder_layers=1,
                         features="ar", **LM_SIZES)
  model = TextAutoencoder(ae)
  tokens = jnp.zeros((8, 16), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), tokens)
  assert FEATURE_MODEL in params["params"]
  encode = lambda p, t: model.apply(p, t, method="encode")
  counted = jax.jit(encode).lower(params, tokens).compile().cost_analysis()["flops"]
  expected = flops.autoencoder_forward_flops(ae)
  assert expected["features"] > 0 and expected["align"] > 0
  # Every matmul exactly: the traced program also holds the LM's read-out, which XLA compiles
  # away (its logits are unused); XLA's count is above the analytic one by the element-wise work.
  readout = 8 * 16 * 2 * ae.feature_width * ae.vocab_size
  assert program_stats.matmul_flops(encode, params, tokens) == 8 * (
      expected["encode"] + expected["features"]) + readout
  assert 1.0 <= counted / (8 * (expected["encode"] + expected["features"])) < 1.2


@pytest.fixture(scope="module")
def feature_run(corpus, tmp_path_factory):
  """A 30-step AR-feature autoencoder stage on a 5-step LM cached like the library's AR models."""
  cache = tmp_path_factory.mktemp("cache")
  workdir = tmp_path_factory.mktemp("features")
  config = config_files.load(str(ROOT / "configs/tiny_latent.py"))
  config.data.path = str(corpus)
  config.autoencoder.update(features="ar", num_steps=30, checkpoint_every_steps=30,
                            stats_batches=1, weight_decay=0.01, **LM_SIZES)
  data = pipeline.prepare_data(config.data, str(workdir))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("CDM_JAX_CACHE", str(cache))
    lm = ar_model.get_judge(data.tokenizer, data.train, "test", ar_model.JudgeConfig(
        width=32, num_layers=1, num_heads=2, mlp_dim=64, batch_size=16, max_steps=LM_STEPS,
        time_limit_minutes=0.0))
  config.autoencoder.feature_model = lm.info["cache"]
  params, report = ae_stage.train(config, str(workdir), data, parallel.make_mesh(None))
  return config, workdir, data, lm, params, report


@pytest.mark.slow  # trains for tens of seconds: the full suite's, not the fast tier's
def test_the_lm_stays_frozen_and_its_flops_count(feature_run):
  config, workdir, _, lm, params, report = feature_run
  for a, b in zip(jax.tree.leaves(lm.params["params"]), jax.tree.leaves(params[FEATURE_MODEL])):
    np.testing.assert_array_equal(a, b)
  ae = builders.autoencoder_config(config)
  lm_flops = LM_STEPS * flops.ar_train_flops(width=32, num_layers=1, mlp_dim=64, seq_len=16,
                                             vocab_size=32, batch_size=16)
  assert report["train_flops"] == pytest.approx(
      30 * flops.autoencoder_train_flops(ae, 16) + lm_flops)
  logged = [json.loads(line) for line in (workdir / "autoencoder/metrics.jsonl").open()]
  assert logged[-1]["step"] == 30 and 0.0 < logged[-1]["align_mse"] < 10.0


@pytest.mark.slow  # trains for tens of seconds: the full suite's, not the fast tier's
def test_a_diffusion_model_encodes_through_the_frozen_lm(feature_run):
  """The diffusion LM's E is the autoencoder with its LM: the same latents as the stage's."""
  config, _, data, _, params, _ = feature_run
  model = builders.make_model(config)
  tree = builders.with_encoder(builders.init_params(config, model), params)
  tokens = jnp.asarray(data.train[:4])
  x0 = model.apply(tree, tokens, method="embed")
  ae = TextAutoencoder(builders.autoencoder_config(config))
  expected = ae.apply({"params": params}, ae.apply({"params": params}, tokens, method="encode"),
                      method="standardize")
  assert x0.shape == (4, 8, 16)
  np.testing.assert_allclose(x0, expected, atol=1e-5)


def test_a_missing_or_mismatched_lm_is_one_clear_error(feature_run, tmp_path):
  config, _, data, lm, _, _ = feature_run
  mesh = parallel.make_mesh(None)
  missing = config.copy_and_resolve_references()
  missing.autoencoder.feature_model = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="needs autoencoder.feature_model"):
    ae_stage.train(missing, str(tmp_path / "a"), data, mesh)
  wider = config.copy_and_resolve_references()
  wider.autoencoder.feature_width = 64
  with pytest.raises(ValueError, match="sizes"):
    ae_stage.train(wider, str(tmp_path / "b"), data, mesh)
  with pytest.raises(ValueError, match="features must be one of"):
    dataclasses.replace(builders.autoencoder_config(config), features="bert")


def test_the_copy_path_adds_each_tokens_embedding_to_the_lm_states():
  """feature_copy: the encoder reads projected LM states plus the token embeddings; with a zero
  embedding table it is exactly the encoder without the copy path, and only "ar" may use it."""
  ae = AutoencoderConfig(vocab_size=40, seq_len=16, latent_dim=8, ratio=4, width=32, num_heads=2,
                         mlp_dim=64, encoder_layers=1, resampler_layers=1, decoder_layers=1,
                         features="ar", **LM_SIZES)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 16), 0, 40)
  plain, copying = TextAutoencoder(ae), TextAutoencoder(dataclasses.replace(ae, feature_copy=True))
  params = copying.init(jax.random.PRNGKey(0), tokens)
  encode = lambda model, p: model.apply(p, tokens, method="encode")
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if "token_embed" in jax.tree_util.keystr(path) else x,
      params)
  np.testing.assert_allclose(encode(copying, zeroed), encode(plain, params), atol=1e-6)
  assert float(jnp.max(jnp.abs(encode(copying, params) - encode(plain, params)))) > 1e-2
  with pytest.raises(ValueError, match="feature_copy .* needs features='ar'"):
    dataclasses.replace(ae, features="scratch", feature_copy=True)
