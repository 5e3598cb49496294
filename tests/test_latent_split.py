"""The "split" context layout of a latent model: a prefix row in context, its continuation
diffused as a row of its own, joined back after the prefix; prefixes only, every other condition
refused with one message."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.core import conditioning, diffusion
from cdm_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID
from cdm_jax.models import ModelConfig, builders
from cdm_jax.runtime import parallel
from cdm_jax.training import autoencoder

from test_latent import latent_config


def split_config(corpus):
  config = latent_config(corpus)
  config.model.context_layout = "split"
  config.condition.update(prefix=0.5, dropout=0.1)
  return config


def _rows(rng, count, n):
  """`BOS pieces EOS PAD...` rows of 1 .. n - 2 pieces."""
  rows = np.full((count, n), PAD_ID, np.int32)
  for row in rows:
    length = rng.integers(1, n - 1)
    row[0], row[1:length + 1], row[length + 1] = BOS_ID, rng.integers(5, 30, length), EOS_ID
  return rows


def test_split_rows_against_python_and_join_back():
  rng = np.random.default_rng(0)
  n = 12
  rows = _rows(rng, 20, n)
  cuts = np.array([rng.integers(1, n) for _ in rows])
  known = np.arange(n)[None, :] < cuts[:, None]
  known[0] = False  # nothing known: the whole row diffuses
  for xp in (np, jnp):
    head, tail = conditioning.context_rows(xp.asarray(rows), xp.asarray(known), "split")
    for row, cut, mask, h, t in zip(rows, cuts, known, np.asarray(head), np.asarray(tail)):
      cut = cut if mask.any() else 1
      np.testing.assert_array_equal(h, list(row[:cut]) + [PAD_ID] * (n - cut))
      np.testing.assert_array_equal(t, [BOS_ID] + list(row[cut:]) + [PAD_ID] * (cut - 1))
  assert isinstance(head, jax.Array)
  joined = conditioning.join_context("split", jnp.asarray(np.where(known, rows, PAD_ID)),
                                     jnp.asarray(known), tail)
  np.testing.assert_array_equal(joined, rows)
  np.testing.assert_array_equal(conditioning.leading_known(np.array([[True, False, True]])), [[1]])


def test_prefix_layouts_are_recognised():
  n = 8
  prefix = np.arange(n)[None, :] < 3
  assert conditioning.is_prefix_layout(np.repeat(prefix, 2, 0))
  assert not conditioning.is_prefix_layout(np.ones((1, n), bool))  # nothing left to generate
  assert not conditioning.is_prefix_layout(prefix | (np.arange(n) == n - 1))  # a known suffix
  assert not conditioning.is_prefix_layout(np.zeros((1, n), bool))  # not even BOS
  template = np.array([[True, True, False, False, True, True, True, True]])
  assert not conditioning.is_prefix_layout(template)


def test_a_split_config_takes_prefixes_and_refuses_the_rest(corpus):
  config = split_config(corpus)
  cfg = builders.model_config(config)
  assert cfg.source_context and cfg.context_layout == "split"
  rows = np.full((2, 16), PAD_ID, np.int32)
  rows[:, :3] = [BOS_ID, 5, 6]
  prefix = np.repeat(np.arange(16)[None] < 3, 2, 0)
  assert builders.latent_condition_fits(cfg, rows, prefix)
  padded = lambda a: np.concatenate([a, np.zeros_like(a)])  # a batch's padding: nothing known
  assert builders.latent_condition_fits(cfg, padded(rows), padded(prefix))
  pairs = ModelConfig(encoder="latent", source_context=True, context_layout="pairs")
  source = np.repeat(np.arange(16)[None] <= 3, 2, 0)
  rows[:, 3] = EOS_ID
  assert builders.latent_condition_fits(pairs, padded(rows), padded(source))
  assert not builders.latent_condition_fits(pairs, rows, prefix)
  rows[:, 3] = 9
  assert not builders.latent_condition_fits(cfg, rows, prefix | (np.arange(16) >= 10))
  assert "reads prefixes only" in builders.latent_condition_error(cfg)
  config.condition.suffix = 0.1
  with pytest.raises(ValueError, match="reads prefixes only.*condition.suffix"):
    builders.condition_config(config)
  assert autoencoder._context_masking(split_config(corpus))[1] == "split"  # pylint: disable=protected-access


def test_the_autoencoder_learns_prefix_rows_continuation_rows_and_whole_rows():
  rng = np.random.default_rng(1)
  rows = _rows(rng, 256, 16)
  rows[:, 1:4] = [7, 8, 9]  # at least three pieces: every cut leaves a piece on both sides
  learned = np.asarray(conditioning.context_training_rows(
      jax.random.PRNGKey(0), jnp.asarray(rows), conditioning.ConditionConfig(prefix=0.6), "split"))
  kinds = []
  for row, got in zip(rows, learned):
    heads = [list(row[:cut]) + [PAD_ID] * (16 - cut) for cut in range(2, 16)]
    tails = [[BOS_ID] + list(row[cut:]) + [PAD_ID] * (cut - 1) for cut in range(2, 16)]
    kind = ("whole" if np.array_equal(got, row) else
            "prefix" if any(np.array_equal(got, h) for h in heads) and EOS_ID not in got else
            "continuation" if any(np.array_equal(got, t) for t in tails) else got)
    kinds.append(kind)
    assert isinstance(kind, str), (row, got)
  counts = {kind: kinds.count(kind) for kind in ("whole", "prefix", "continuation")}
  assert all(40 < count < 130 for count in counts.values()), counts


def test_a_split_model_reads_the_prefix_in_context_and_diffuses_the_continuation(corpus):
  """In the loss: the context is the prefix row's latents (a change after the cut leaves it), the
  diffused row the continuation (a change before the cut leaves the target latents)."""
  config = split_config(corpus)
  model = builders.make_model(config)
  params = builders.init_params(config, model)
  rows = jnp.asarray(np.tile(np.r_[BOS_ID, np.arange(3, 13), EOS_ID, [PAD_ID] * 4], (2, 1)),
                     jnp.int32)
  known = jnp.asarray(np.tile(np.arange(16) < 5, (2, 1)))
  apply = lambda method, *a, **k: model.apply(params, *a, method=method, **k)

  def split(tokens):
    inputs = diffusion.LossInputs(tokens=tokens, mask=tokens != PAD_ID, t=jnp.array([0.3, 0.6]),
                                  weight=jnp.ones(2), noise=jnp.zeros((2, 2, 8, 16)),
                                  self_cond=jnp.array(False), known=known,
                                  null_cond=jnp.array([False, True]))
    inputs, cond = diffusion.source_in_context(apply, inputs, "split")
    return np.asarray(inputs.tokens), np.asarray(cond["context"])

  targets, context = split(rows)
  np.testing.assert_array_equal(targets[0], np.r_[BOS_ID, np.arange(7, 13), EOS_ID, [PAD_ID] * 8])
  assert np.abs(context[0]).sum() > 0 and not context[1].any()  # the second row: null condition
  after, before = split(rows.at[:, 9].set(20)), split(rows.at[:, 2].set(20))
  np.testing.assert_array_equal(after[1], context)
  assert not np.allclose(before[1][0], context[0])
  np.testing.assert_array_equal(before[0], targets)


@pytest.mark.slow  # compiles a sampler
def test_split_sampling_keeps_the_prefix_and_refuses_templates(corpus):
  from cdm_jax.core import sample_options  # pylint: disable=g-import-not-at-top
  from cdm_jax.sampling import make_sample_fn  # pylint: disable=g-import-not-at-top
  config = split_config(corpus)
  model = builders.make_model(config)
  params = builders.init_params(config, model)
  fn = make_sample_fn(model, builders.make_schedule(config), parallel.make_mesh(1),
                      sample_options.SampleConfig(num_samples=2, num_steps=2, clamp="none"))
  rows = np.full((2, 16), PAD_ID, np.int32)
  rows[:, :4] = [BOS_ID, 7, 8, 9]
  prefix = np.repeat(np.arange(16)[None] < 4, 2, 0)
  tokens = np.asarray(fn(params, jax.random.PRNGKey(0), rows, prefix))
  assert tokens.shape == (2, 16) and (tokens[:, :4] == rows[:, :4]).all()
  assert np.asarray(fn(params, jax.random.PRNGKey(0))).shape == (2, 16)  # unconditioned too
  template = prefix | (np.arange(16)[None] >= 12)
  with pytest.raises(ValueError, match="reads prefixes only") as info:
    fn(params, jax.random.PRNGKey(0), rows, template)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("layout", ["positions", "split"])
def test_the_likelihood_bound_of_a_prefix_model_covers_the_whole_row(corpus, layout):
  """A latent model reading known text in context is bounded unconditionally, on whole rows: its
  reconstruction term reads every piece (a seq2seq split would bound the empty part after EOS)."""
  config = split_config(corpus)
  config.model.context_layout = layout
  model = builders.make_model(config)
  params = builders.init_params(config, model)
  rows = jnp.asarray(np.tile(np.r_[BOS_ID, np.arange(5, 11), EOS_ID, [PAD_ID] * 8], (2, 1)),
                     jnp.int32)
  bound = lambda tokens: diffusion.likelihood_bound(
      model, params, tokens, t=jnp.array([0.3, 0.7]), noise=jnp.zeros((2, 2, 8, 16)),
      schedule=builders.make_schedule(config))
  base, changed = bound(rows), bound(rows.at[:, 3].set(20))
  assert float(base["positions"]) == rows.size
  assert float(base["reconstruction"]) != float(changed["reconstruction"])
