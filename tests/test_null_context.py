"""A latent model's null context, the contrast of classifier-free guidance: zeros, or with
`model.null_context="length"` the dropped condition's context row with its known pieces UNK, so
that the null still says how much text is known (for a "split" model: how long the prefix was, and
so how long the continuation should be)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.core import conditioning, diffusion
from cdm_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from cdm_jax.models import ModelConfig, builders
from cdm_jax.sampling import sample_fn as sample_fn_lib

from test_latent_split import split_config


def _blank_reference(row):
  """Python's reading of blank_known: BOS, EOS and PAD stay, every other piece becomes UNK."""
  return [piece if i == 0 or piece in (PAD_ID, EOS_ID) else UNK_ID for i, piece in enumerate(row)]


def test_blank_rows_keep_the_extent_of_the_known_text():
  rows = np.array([[BOS_ID, 7, 8, 9, PAD_ID, PAD_ID],
                   [BOS_ID, 5, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
                   [BOS_ID, PAD_ID, PAD_ID, 11, 12, EOS_ID]], np.int32)
  for xp in (np, jnp):
    blank = np.asarray(conditioning.blank_known(xp.asarray(rows)))
    np.testing.assert_array_equal(blank, [_blank_reference(row) for row in rows])


@pytest.mark.parametrize("null_context", ["zeros", "length"])
def test_context_latents_of_given_dropped_and_unconditioned_rows(null_context):
  """With an embedding that shows its rows (piece i -> the value i), the contexts are readable: a
  given condition its row, a row with nothing known zeros, a dropped condition zeros or its blank
  row."""
  rows = np.array([[BOS_ID, 7, 8, PAD_ID], [BOS_ID, 7, 8, PAD_ID], [BOS_ID, PAD_ID, PAD_ID, PAD_ID]],
                  np.int32)
  known = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
  null_cond = np.array([False, True, False])
  embed = lambda tokens: tokens[..., None].astype(jnp.float32)
  context = np.asarray(diffusion.context_latents(embed, jnp.asarray(rows), jnp.asarray(known),
                                                 jnp.asarray(null_cond), null_context))[..., 0]
  dropped = _blank_reference(rows[1]) if null_context == "length" else [0] * 4
  np.testing.assert_array_equal(context, [rows[0], dropped, [0] * 4])


def test_only_a_latent_model_without_marked_rows_takes_the_length_null(corpus):
  config = split_config(corpus)
  config.model.null_context = "length"
  assert builders.model_config(config).null_context == "length"
  config.model.context_layout = "marked"
  with pytest.raises(ValueError, match="null_context='length'.*'marked'"):
    builders.model_config(config)
  with pytest.raises(ValueError, match="latent model's"):
    ModelConfig(null_context="length")
  with pytest.raises(ValueError, match="null_context must be one of"):
    ModelConfig(encoder="latent", null_context="empty")


@pytest.mark.slow  # builds a model
def test_a_dropped_prefix_trains_on_its_blank_row(corpus):
  """In the loss, the dropped example's context is the latents of its prefix row blanked: not
  zeros, and independent of the prefix's words."""
  config = split_config(corpus)
  config.model.null_context = "length"
  model = builders.make_model(config)
  params = builders.init_params(config, model)
  apply = lambda method, *a, **k: model.apply(params, *a, method=method, **k)
  rows = jnp.asarray(np.tile(np.r_[BOS_ID, np.arange(3, 13), EOS_ID, [PAD_ID] * 4], (2, 1)),
                     jnp.int32)
  known = jnp.asarray(np.tile(np.arange(16) < 5, (2, 1)))

  def context(tokens):
    inputs = diffusion.LossInputs(tokens=tokens, mask=tokens != PAD_ID, t=jnp.array([0.3, 0.6]),
                                  weight=jnp.ones(2), noise=jnp.zeros((2, 2, 8, 16)),
                                  self_cond=jnp.array(False), known=known,
                                  null_cond=jnp.array([False, True]))
    return np.asarray(diffusion.source_in_context(apply, inputs, "split", "length")[1]["context"])

  base, other_words = context(rows), context(rows.at[:, 2].set(20))
  blank = np.asarray(apply("embed", conditioning.blank_known(jnp.where(known, rows, PAD_ID))))
  np.testing.assert_allclose(base[1], blank[1], atol=1e-6)
  assert np.abs(base[1]).sum() > 0
  np.testing.assert_array_equal(other_words[1], base[1])
  assert not np.allclose(other_words[0], base[0])


@pytest.mark.slow  # builds a model
@pytest.mark.parametrize("null_context", ["zeros", "length"])
def test_guidance_contrasts_with_the_models_null_context(corpus, null_context):
  """The guided estimate is `guide(given, null)` with the model's null context; a row with nothing
  known reads zeros, as in training."""
  config = split_config(corpus)
  config.model.null_context = null_context
  model = builders.make_model(config)
  params = builders.init_params(config, model)
  schedule = builders.make_schedule(config)
  known = np.full((2, 16), PAD_ID, np.int32)
  known[0, :4] = [BOS_ID, 7, 8, 9]
  mask = np.zeros((2, 16), bool)
  mask[0, :4] = True  # row 1: nothing known
  known, mask = jnp.asarray(known), jnp.asarray(mask)
  shape = (2, model.config.latent_length, model.config.embed_dim)
  x_t = jax.random.normal(jax.random.PRNGKey(0), shape)
  t, selfcond = jnp.full((2,), 0.5), jnp.zeros(shape)
  guided = sample_fn_lib.make_denoise_fn(model, params, schedule, (known, mask), guidance_scale=2.0)
  embed = lambda rows: model.apply(params, rows, method="embed")
  denoise = lambda context: model.apply(params, x_t, schedule.log_snr(t), selfcond, context=context,
                                        method="denoise").x0_hat
  rows = jnp.where(mask, known, PAD_ID)
  given = embed(rows).at[1].set(0.0)
  null = embed(conditioning.blank_known(rows)).at[1].set(0.0)
  null = null if null_context == "length" else jnp.zeros_like(null)
  expected = conditioning.guide(denoise(given), denoise(null), 2.0)
  np.testing.assert_allclose(guided(x_t, t, selfcond), expected, atol=1e-5)
  unguided = sample_fn_lib.make_denoise_fn(model, params, schedule, (known, mask))
  np.testing.assert_allclose(unguided(x_t, t, selfcond), denoise(given), atol=1e-5)
