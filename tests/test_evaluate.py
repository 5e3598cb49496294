"""The judge must discriminate: real held-out text scores like real text, shuffled text does not."""

import jax
import numpy as np
import pytest

from cdm_jax.evaluation import evaluate
from cdm_jax.evaluation import ar_model as judge_lib
from cdm_jax.evaluation import text_metrics
from cdm_jax.data import encoding, tokenizer as tokenizer_lib

NOUNS = "cat dog bird fish horse mouse tree house river stone".split()
VERBS = "sees likes chases finds hears follows".split()
ADJS = "big small red old young quiet".split()


def sentences(rng, count):
  out = []
  for _ in range(count):
    words = ["the", rng.choice(ADJS), rng.choice(NOUNS), rng.choice(VERBS), "the", rng.choice(NOUNS)]
    if rng.random() < 0.5:
      words += ["near", "the", rng.choice(NOUNS)]
    out.append(" ".join(words))
  return out


@pytest.fixture(scope="module")
def judge_cache(tmp_path_factory):
  """CDM_JAX_CACHE pointed at a temporary folder for this module, restored afterwards."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("CDM_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield


@pytest.fixture(scope="module")
def setup(judge_cache):
  rng = np.random.default_rng(0)
  train_text, held_out = sentences(rng, 3000), sentences(rng, 400)
  tokenizer = tokenizer_lib.train_tokenizer(train_text, 48)
  train_rows, _ = encoding.encode(tokenizer, train_text, 32)
  config = judge_lib.JudgeConfig(width=64, num_layers=2, num_heads=2, mlp_dim=128, dropout_rate=0.0,
                                 max_steps=400, warmup_steps=20, learning_rate=3e-3, time_limit_minutes=0)
  judge = judge_lib.get_judge(tokenizer, train_rows, "synthetic", config)
  assert judge.info["steps"] == 400  # no time limit: exactly max_steps, however busy the machine
  scorer = evaluate.Scorer(judge, tokenizer, 32, held_out[:200],
                           train_index=text_metrics.TrainingSetIndex(train_text))
  return judge, scorer, held_out[200:], tokenizer, train_rows, config


@pytest.mark.slow
def test_real_text_scores_like_real_and_shuffled_text_does_not(setup):
  _, scorer, real, _, _, _ = setup
  rng = np.random.default_rng(1)
  shuffled = [" ".join(rng.permutation(s.split())) for s in real]
  real_scores, shuffled_scores = scorer.score(real), scorer.score(shuffled)
  assert 0.85 < real_scores["judge_ppl_ratio"] < 1.15
  assert shuffled_scores["judge_ppl_ratio"] > 2.0
  assert real_scores["mauve"] > 0.8 and shuffled_scores["mauve"] < 0.5
  assert real_scores["empty_fraction"] == 0.0


@pytest.mark.slow
def test_judge_is_cached_and_samples_like_the_corpus(setup, monkeypatch):
  judge, scorer, _, tokenizer, train_rows, config = setup

  def no_training(*args, **kwargs):
    raise AssertionError("the judge was trained again instead of loaded from the cache")

  monkeypatch.setattr(judge_lib, "train_judge", no_training)
  again = judge_lib.get_judge(tokenizer, train_rows, "synthetic", config)
  assert again.info["cache"] == judge.info["cache"] and again.info["steps"] == judge.info["steps"]
  jax.tree.map(np.testing.assert_array_equal, again.params, judge.params)
  # Another corpus id is another judge: that one would have to be trained.
  with pytest.raises(AssertionError, match="trained again"):
    judge_lib.get_judge(tokenizer, train_rows, "another corpus", config)
  rows = judge.sample(64, seed=0)
  assert rows.shape == (64, 32) and np.all(rows[:, 0] == tokenizer_lib.BOS_ID)
  texts = [tokenizer_lib.decode_tokens(tokenizer, r) for r in rows]
  assert scorer.score(texts)["judge_ppl_ratio"] < 1.5
  np.testing.assert_array_equal(judge.sample(64, seed=0), rows)


def test_text_statistics():
  texts = ["a b c d e", "a b c d f", ""]
  stats = text_metrics.text_statistics(texts, text_metrics.TrainingSetIndex(["a b c d e"]))
  assert stats["empty_fraction"] == pytest.approx(1 / 3)
  assert stats["distinct_1"] == pytest.approx(6 / 10)
  assert stats["copy_rate"] == pytest.approx(0.5)
  assert stats["novelty_4gram"] == pytest.approx(1 / 4)  # only "b c d f" is new
  assert stats["self_bleu_4"] > 50
  # 10 words: a b c d twice, e and f once each.
  probs = np.array([0.2] * 4 + [0.1] * 2)
  assert stats["unigram_entropy"] == pytest.approx(-np.sum(probs * np.log(probs)))


def test_unigram_entropy_at_a_word_count_subsamples_the_pooled_words():
  texts = ["a a b", "a c"]  # 5 words: a x3, b, c
  assert text_metrics.unigram_entropy_at(texts, 5) == text_metrics.unigram_entropy(texts)
  assert text_metrics.unigram_entropy_at(texts, 9) == text_metrics.unigram_entropy(texts)
  # Every 2-word subset is {a, a} (entropy 0; 3 of the 10 pairs) or two different words (log 2).
  expected = 7 / 10 * np.log(2)
  assert text_metrics.unigram_entropy_at(texts, 2, draws=4000) == pytest.approx(expected, abs=0.02)
  assert text_metrics.unigram_entropy_at(texts, 2, seed=3) == text_metrics.unigram_entropy_at(
      texts, 2, seed=3)


def test_judge_budget():
  assert judge_lib.judge_budget(steps=500) == judge_lib.JudgeConfig(max_steps=500, time_limit_minutes=0.0)
  assert judge_lib.judge_budget(2.5).time_limit_minutes == 2.5
  with pytest.raises(ValueError, match="steps"):
    judge_lib.judge_budget(steps=-1)
  with pytest.raises(ValueError, match="minutes"):
    judge_lib.judge_budget(0.0)


def test_results_are_strict_json():
  """All-empty samples give a NaN judge perplexity; the written JSON has null there, not NaN."""
  import json
  import pathlib
  result = {"judge_ppl_ratio": float("nan"), "mauve": None, "ppl": np.float32(3.5),
            "nested": {"values": [1.0, float("inf"), np.float64("nan")]}, "path": pathlib.Path("a")}
  text = evaluate.to_json(result)
  parsed = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON constant {name}"))
  assert parsed == {"judge_ppl_ratio": None, "mauve": None, "ppl": 3.5,
                    "nested": {"values": [1.0, None, None]}, "path": "a"}
