"""Task metrics against hand-computed values, the infill spans, and the AR prefix LM's prompts."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from cdm_jax import judge as judge_lib, tasks
from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.models import ModelConfig, TransformerLM


def _lcs_brute_force(a, b):
  """The longest common subsequence by enumeration (short inputs only)."""
  for size in range(min(len(a), len(b)), 0, -1):
    subsequences = set(itertools.combinations(b, size))
    if any(c in subsequences for c in itertools.combinations(a, size)):
      return size
  return 0


def test_lcs_and_rouge_l():
  rng = np.random.default_rng(0)
  for _ in range(50):
    a = list(rng.integers(0, 4, rng.integers(0, 8)))
    b = list(rng.integers(0, 4, rng.integers(0, 8)))
    assert tasks.lcs_length(a, b) == _lcs_brute_force(a, b)
  # LCS("the cat sat on the mat", "the cat was on a mat") = the cat on mat: 4; F = 2*4/(6+6)
  assert abs(tasks.rouge_l("the cat sat on the mat", "The cat was on a mat") - 8 / 12) < 1e-12
  assert tasks.rouge_l("", "") == 1.0 and tasks.rouge_l("a", "") == 0.0


def test_seq2seq_scores_count_exact_matches_at_1_and_k():
  scores = tasks.seq2seq_scores([["dog", "cat"], ["a  Tree", "x"], ["no", "nope"]],
                                ["cat", "a tree", "yes"])
  assert scores["accuracy_at_1"] == 1 / 3 and scores["accuracy_at_2"] == 2 / 3
  assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
  perfect = tasks.seq2seq_scores([["the cat sat on the mat"]], ["the cat sat on the mat"])
  assert abs(perfect["bleu"] - 100.0) < 1e-9 and perfect["rouge_l"] == 1.0


def test_infill_layouts_hide_one_span_inside_the_text():
  rows = np.zeros((200, 12), np.int32)
  lengths = np.random.default_rng(1).integers(1, 10, 200)  # pieces between BOS and EOS
  for row, n in zip(rows, lengths):
    row[0], row[1:n + 1], row[n + 1] = tokenizer_lib.BOS_ID, 7, tokenizer_lib.EOS_ID
  known = tasks.infill_layouts(rows, seed=0)
  starts = set()
  for row, n, mask in zip(rows, lengths, known):
    hidden = np.flatnonzero(~mask)
    assert len(hidden) == max(1, round(0.25 * n))
    np.testing.assert_array_equal(hidden, np.arange(hidden[0], hidden[0] + len(hidden)))
    assert hidden[0] >= 1 and hidden[-1] <= n  # never BOS, EOS or PAD
    starts.add(hidden[0])
  assert len(starts) >= 5


def test_ar_prefix_lm_keeps_its_prompt_and_then_samples():
  cfg = ModelConfig(vocab_size=12, seq_len=10, width=16, num_layers=1, num_heads=2, mlp_dim=16)
  model = TransformerLM(cfg)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10), jnp.int32))
  judge = judge_lib.Judge(model, params, {})
  prompts = np.zeros((6, 10), np.int32)
  prompts[:, :4] = [tokenizer_lib.BOS_ID, 7, tokenizer_lib.EOS_ID, 9]  # an EOS inside the prompt
  out = judge.sample(6, seed=0, prompts=prompts, batch_size=4)
  np.testing.assert_array_equal(out[:, :4], prompts[:, :4])
  assert (out[:, 4:] != tokenizer_lib.PAD_ID).any(axis=1).all()  # it continues after the prompt
  ends = [np.flatnonzero(row[3:] == tokenizer_lib.EOS_ID) for row in out]
  assert all(len(e) for e in ends)  # and ends with an EOS of its own
  free = judge.sample(6, seed=0, batch_size=4)
  assert (free[:, 0] == tokenizer_lib.BOS_ID).all()
