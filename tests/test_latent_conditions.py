"""Prefix, suffix, infilling and length conditions on a latent model: the known row (unknown
positions PAD) read in context, the whole row diffused, the known tokens in place in every output."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.core import conditioning, diffusion
from cdm_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from cdm_jax.evaluation import tasks
from cdm_jax.models import builders
from cdm_jax.training import autoencoder

from conftest import ROOT
from test_latent import latent_config

CONDITIONS = dict(prefix=0.3, suffix=0.2, spans=0.3, dropout=0.1)


def conditioned_config(corpus, **autoencoder_settings):
  config = latent_config(corpus, **autoencoder_settings)
  config.condition.update(**CONDITIONS)
  return config


def test_positions_context_rows_against_numpy():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 30, (5, 12)).astype(np.int32)
  known = rng.random((5, 12)) < 0.4
  context, diffused = conditioning.context_rows(jnp.asarray(tokens), jnp.asarray(known), "positions")
  np.testing.assert_array_equal(np.asarray(diffused), tokens)
  np.testing.assert_array_equal(np.asarray(context), np.where(known, tokens, PAD_ID))
  host, _ = conditioning.context_rows(tokens, known, "positions")  # NumPy rows stay on the host
  assert isinstance(host, np.ndarray)


def test_autoencoder_learns_the_masked_context_rows(corpus):
  rows = np.full((64, 16), PAD_ID, np.int32)
  rows[:, 0], rows[:, 1:9], rows[:, 9] = BOS_ID, np.arange(3, 11), EOS_ID
  masked = np.asarray(conditioning.masked_rows(
      jax.random.PRNGKey(0), jnp.asarray(rows), conditioning.ConditionConfig(**CONDITIONS)))
  kept = masked != PAD_ID
  np.testing.assert_array_equal(masked[kept], rows[kept])  # nothing but PAD is ever written
  whole = (masked == rows).all(axis=1)
  assert 0.05 < whole.mean() < 0.5  # the unconditioned 20% stay whole
  prefixes = (~whole) & (masked[:, 9] == PAD_ID) & kept[:, 1]
  assert prefixes.any()  # prefix rows without their EOS
  marked = np.asarray(conditioning.masked_rows(
      jax.random.PRNGKey(0), jnp.asarray(rows), conditioning.ConditionConfig(**CONDITIONS), UNK_ID))
  assert (marked == UNK_ID).any()  # the same draws, UNK where the rows above have PAD written
  np.testing.assert_array_equal(np.where(marked == UNK_ID, PAD_ID, marked), masked)
  masking = autoencoder._context_masking  # pylint: disable=protected-access
  assert masking(conditioned_config(corpus))[1] == "positions"
  marked_config = conditioned_config(corpus)
  marked_config.model.context_layout = "marked"
  assert masking(marked_config)[1] == "marked"
  np.testing.assert_array_equal(conditioning.context_training_rows(
      jax.random.PRNGKey(0), jnp.asarray(rows), conditioning.ConditionConfig(**CONDITIONS),
      "marked"), marked)  # what the autoencoder learns for this layout
  assert masking(latent_config(corpus)) == ()


def test_the_context_layout_by_config_and_its_rows(corpus):
  """Without model.context_layout (as in older workdirs) the unknown positions are PAD; "marked"
  fills them with UNK; seq2seq sources keep "pairs"."""
  config = conditioned_config(corpus)
  assert builders.model_config(config).context_layout == "positions"
  config.model.context_layout = "marked"
  assert builders.model_config(config).context_layout == "marked"
  config.condition.update(prefix=0.0, suffix=0.0, spans=0.0, source=0.5)
  assert builders.model_config(config).context_layout == "pairs"
  tokens = np.array([[BOS_ID, 5, 6, 7, EOS_ID, PAD_ID]])
  known = np.array([[True, True, False, False, False, True]])
  for layout, fill in (("positions", PAD_ID), ("marked", UNK_ID)):
    context, diffused = conditioning.context_rows(tokens, known, layout)
    np.testing.assert_array_equal(context, [[BOS_ID, 5, fill, fill, fill, PAD_ID]])
    np.testing.assert_array_equal(diffused, tokens)


@pytest.mark.slow  # trains for tens of seconds: the full suite's, not the fast tier's
def test_positions_model_reads_the_known_row_in_context(corpus):
  """The loss of a "positions" model sees the masked row's latents in context: changing an
  unknown token of the context row changes nothing, changing a known one changes the loss."""
  config = conditioned_config(corpus)
  model = builders.make_model(config)
  assert model.config.source_context and model.config.context_layout == "positions"
  params = builders.init_params(config, model)
  schedule = builders.make_schedule(config)
  tokens = jnp.asarray(np.tile(np.r_[BOS_ID, np.arange(3, 13), EOS_ID, [PAD_ID] * 4], (2, 1)),
                       jnp.int32)
  known = jnp.asarray(np.tile(np.arange(16) < 5, (2, 1)))

  def loss(rows, known_mask):
    inputs = diffusion.LossInputs(tokens=rows, mask=rows != PAD_ID, t=jnp.array([0.3, 0.6]),
                                  weight=jnp.ones(2), noise=jnp.zeros((2, 2, 8, 16)), self_cond=jnp.array(False),
                                  known=known_mask, null_cond=jnp.zeros((2,), bool))
    return float(diffusion.training_losses(model, params, inputs, schedule,
                                           builders.loss_config(config), train=False)[0])

  base = loss(tokens, known)
  assert np.isfinite(base)
  unknown_changed = tokens.at[:, 7].set(20)  # position 7 unknown: a different target only
  known_changed = tokens.at[:, 2].set(20)    # position 2 known: a different context too
  inputs_only = lambda rows: diffusion.source_in_context(
      lambda method, *a, **k: model.apply(params, *a, method=method, **k),
      diffusion.LossInputs(tokens=rows, mask=rows != PAD_ID, t=jnp.array([0.3, 0.6]),
                           weight=jnp.ones(2), noise=jnp.zeros((2, 2, 8, 16)), self_cond=jnp.array(False),
                           known=known, null_cond=jnp.zeros((2,), bool)), "positions")[1]["context"]
  np.testing.assert_array_equal(inputs_only(unknown_changed), inputs_only(tokens))
  assert not np.allclose(inputs_only(known_changed), inputs_only(tokens))
  assert loss(tokens, jnp.zeros_like(known)) != base  # nothing known: the null context


@pytest.fixture(scope="module")
def conditioned_workdir(corpus, tmp_path_factory):
  """A latent workdir trained with the prefix / suffix / spans mixture (a short autoencoder)."""
  from cdm_jax.training import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("latent_conditions")
  config = conditioned_config(corpus, num_steps=100)
  config.train.update(num_train_steps=10, eval_every_steps=0, sample_every_steps=0,
                      checkpoint_every_steps=10)
  train.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.mark.slow
def test_known_text_verbatim_in_every_output(conditioned_workdir):
  import cdm_jax  # pylint: disable=g-import-not-at-top
  generator = cdm_jax.load(str(conditioned_workdir))
  n = generator.config.data.seq_len
  layouts = {
      "prefix": conditioning.prefix_layout(generator.tokenizer, "the cat", n),
      "suffix": conditioning.template_layout(generator.tokenizer, "___:4 on the mat", n),
      "infill": conditioning.template_layout(generator.tokenizer, "the ___:3 sat on ___:2 mat", n),
      "length": conditioning.length_layout(5, n),
  }
  for name, (known, mask) in layouts.items():
    rows = np.repeat(known[None], 6, 0)
    masks = np.repeat(mask[None], 6, 0)
    for guidance in (0.0, 1.5):
      tokens = generator.sample_tokens(6, seed=1, condition=(rows, masks), guidance_scale=guidance)
      np.testing.assert_array_equal(tokens[masks], rows[masks], err_msg=name)
  assert all(t.startswith("the cat") for t in generator.sample(4, prefix="the cat", seed=0))
  assert all(t.endswith("on the mat") for t in generator.sample(4, suffix="on the mat", gap_length=4,
                                                                   seed=0))
  for text in generator.infill("the ___:3 sat on ___:2 mat", 4, seed=0):
    # (a generated piece may continue a known word: "on" + "e")
    assert re.fullmatch(r"the.* sat on.*mat", text), text
  assert len(generator.sample(3, lengths=[2, 3, 4])) == 3


@pytest.mark.slow
def test_cli_prefix_and_template_on_a_latent_workdir(conditioned_workdir, tmp_path):
  out = tmp_path / "samples.jsonl"
  command = [sys.executable, "-m", "cdm_jax.cli.generate", f"--workdir={conditioned_workdir}",
             "--num_samples=3", "--steps=4", "--prefix=the dog", f"--output={out}"]
  subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
  texts = out.read_text().splitlines()
  assert len(texts) == 3 and all(t.startswith("the dog") for t in texts)
  command[-2:] = ["--template=a ___:2 ran", f"--output={out}"]
  subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
  texts = out.read_text().splitlines()
  assert len(texts) == 3 and all(t.startswith("a ") and t.endswith(" ran") for t in texts)


def test_continuation_layouts_and_generated_parts():
  rows = np.array([[BOS_ID, 5, 6, 7, 8, EOS_ID, PAD_ID, PAD_ID],
                   [BOS_ID, 5, 6, 7, EOS_ID, PAD_ID, PAD_ID, PAD_ID]])
  known = tasks.continuation_layouts(rows)
  np.testing.assert_array_equal(known.sum(axis=1), [3, 2])  # BOS + 2 of 4 pieces, BOS + 1 of 3
  uncut = tasks.continuation_layouts(np.array([[BOS_ID, 5, 6, 7, 8, 9, 10, 11]]))  # no EOS
  np.testing.assert_array_equal(uncut, [np.arange(8) < 4])  # BOS + 3 of 7 pieces
  sampled = np.array([[BOS_ID, 5, 6, 9, EOS_ID, 4, 4, 4],
                      [BOS_ID, 5, 9, 9, 9, 9, 9, 9]])
  parts = tasks.continuations(sampled, known)
  np.testing.assert_array_equal(parts[0], [9, EOS_ID])
  np.testing.assert_array_equal(parts[1], [9] * 6)  # no EOS: to the row's end
  # PAD inside the generated part is dropped, as in the text a user reads; a row whose generated
  # part is PAD up to its EOS is empty
  holes = np.array([[BOS_ID, 5, 6, PAD_ID, 9, PAD_ID, EOS_ID, 4],
                    [BOS_ID, 5, PAD_ID, PAD_ID, EOS_ID, 9, 9, 9]])
  parts = tasks.continuations(holes, known)
  np.testing.assert_array_equal(parts[0], [9, EOS_ID])
  np.testing.assert_array_equal(parts[1], [EOS_ID])
  assert tasks.continuation_scores(_CopyJudge(), [rows[0, :3], rows[1, :2]], parts,
                                   seq_len=8)["empty_fraction"] == 0.5


class _CopyJudge:
  """A stand-in judge: a target costs 1 nat when it repeats the token before it, else 3."""

  def score(self, tokens):
    targets, previous = tokens[:, 1:], tokens[:, :-1]
    real = targets != PAD_ID
    nll = np.where(targets == previous, 1.0, 3.0) * real
    return {"nll": nll.sum(axis=1), "tokens": real.sum(axis=1)}


def test_continuation_scores_by_the_chain_rule():
  prefixes = [np.array([BOS_ID, 5]), np.array([BOS_ID, 6])]
  generated = [np.array([5, 5, EOS_ID]), np.array([6, EOS_ID])]
  scores = tasks.continuation_scores(_CopyJudge(), prefixes, generated, seq_len=8)
  # Own prefixes: 1 + 1 + 3 and 1 + 3 nats over 5 tokens; foreign ones: 3 + 1 + 3 and 3 + 3.
  assert scores["judge_ppl"] == pytest.approx(np.exp(9 / 5))
  assert scores["context_use_nats"] == pytest.approx(np.mean([(7 - 5) / 3, (6 - 4) / 2]))
  assert scores["mean_length_pieces"] == 1.5 and scores["empty_fraction"] == 0.0


@pytest.mark.slow
def test_continuation_task_on_a_latent_workdir(conditioned_workdir, tmp_path, monkeypatch):
  from cdm_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("CDM_JAX_CACHE", str(tmp_path / "cache"))
  result = evaluate.evaluate_task(str(conditioned_workdir), "continuation", num_examples=12,
                                  seed=0, judge_steps=20, write=False)
  assert result["examples"] == 12 and result["judge"]["steps"] == 20
  for name in ("diffusion", "ar_baseline", "real"):
    scores = result[name]
    assert scores["judge_ppl"] > 1 and np.isfinite(scores["context_use_nats"]), name
  for shown in result["diffusion"]["examples_shown"]:
    assert shown["text"].startswith(shown["prefix"])


def test_the_demo_config_is_the_latent_recipe_with_conditions():
  """configs/wordnet_latent_cond.py (`CONFIG=` of scripts/demo.sh for the latent demo) differs from
  the latent recipe only in its condition mixture, the demo's time limit and the learning rate its
  figures were measured at."""
  from cdm_jax.runtime import config_files
  from cdm_jax.runtime.config_record import flatten
  load = lambda name: config_files.load(ROOT / "configs" / name, {"data.path": "unused.txt"})
  demo, recipe = load("wordnet_latent_cond.py"), load("wordnet_latent.py")
  model = builders.model_config(demo)
  assert model.is_latent and model.source_context and model.context_layout == "positions"
  old, new = flatten(recipe.to_dict()), flatten(demo.to_dict())
  changed = {key for key in new if new[key] != old.get(key)}
  assert changed == {"condition.prefix", "condition.suffix", "condition.spans",
                     "train.time_limit_minutes", "train.learning_rate"}, changed
  assert (demo.train.learning_rate, recipe.train.learning_rate) == (1e-3, 2e-3)
