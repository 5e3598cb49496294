"""Task metrics against hand-computed values, the infill spans, the AR prefix LM's prompts, and
the seq2seq evaluation's ranked lists on a tiny trained workdir."""

import itertools
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.evaluation import evaluate
from cdm_jax import sampling
from cdm_jax.evaluation import ar_model as judge_lib
from cdm_jax.evaluation import tasks
from cdm_jax.data import pipeline, tokenizer as tokenizer_lib
from cdm_jax.models import ModelConfig, TransformerLM
from conftest import WORDS, tiny_config


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
  # rouge-score's tokens: punctuation separates, case and non-ASCII letters do not count.
  assert tasks.rouge_tokens("Oak-tree, (genus Quercus)!") == ["oak", "tree", "genus", "quercus"]
  assert tasks.rouge_l("the cat, sat.", "The cat sat") == 1.0
  assert tasks.rouge_tokens("café 2x") == ["caf", "2x"]


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


@pytest.mark.slow
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


def test_rank_by_votes_orders_by_count_then_first_draw():
  draws = ["b", "a", "B ", "", "c", "a", "b", "d"]
  # b: 3 votes ("B " is the same words), a: 2, then c and d with 1 each in drawn order; "" dropped
  assert tasks.rank_by_votes(draws, 10) == ["b", "a", "c", "d"]
  assert tasks.rank_by_votes(draws, 2) == ["b", "a"]
  assert tasks.rank_by_votes(["y", "x", "x y", "x"], 3) == ["x", "y", "x y"]
  assert tasks.rank_by_votes(["", " "], 3) == []


def test_seq2seq_scores_take_ranked_lists_shorter_than_k():
  scores = tasks.seq2seq_scores([["cat"], [], ["x", "a tree"]], ["cat", "dog", "a tree"], k=3)
  assert scores["accuracy_at_1"] == 1 / 3 and scores["accuracy_at_3"] == 2 / 3
  assert scores["candidates"] == 3 and scores["examples"] == 3
  with pytest.raises(ValueError, match="longer than k=1"):
    tasks.seq2seq_scores([["cat", "dog"]], ["cat"], k=1)


@pytest.fixture(scope="module")
def seq2seq_workdir(tmp_path_factory):
  """A tiny model trained for 10 steps on JSONL pairs (target: the source's words reversed)."""
  from cdm_jax.training import train  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  folder = tmp_path_factory.mktemp("seq2seq")
  lines = []
  for _ in range(300):
    words = list(rng.choice(WORDS, rng.integers(1, 4)))
    lines.append(json.dumps({"src": " ".join(words), "tgt": " ".join(words[::-1])}))
  (folder / "pairs.jsonl").write_text("\n".join(lines))
  config = tiny_config(folder / "pairs.jsonl", num_train_steps=10, eval_every_steps=0,
                       sample_every_steps=0)
  config.data.update(corpus="jsonl", source_field="src", target_field="tgt")
  config.condition.update(prefix=0.0, suffix=0.0, spans=0.0, source=0.9)
  train.train_and_evaluate(config, str(folder / "run"))
  return folder / "run"


@pytest.mark.slow
def test_evaluate_seq2seq_scores_the_vote_of_the_draws(seq2seq_workdir, monkeypatch):
  monkeypatch.setenv("CDM_JAX_CACHE", str(seq2seq_workdir.parent / "cache"))
  generator = sampling.load(str(seq2seq_workdir))
  data = pipeline.prepare_data(generator.config.data, str(seq2seq_workdir))
  pairs = tasks.held_out_pairs(generator, data, 0, 5)
  assert tasks.held_out_pairs(generator, data, 1, 4)["sources"] == pairs["sources"][1:]
  shuffled = tasks.held_out_pairs(generator, data, 0, len(data.valid_text))["sources"]
  in_order = [source for source, _ in data.valid_text]  # all keep a target at these lengths
  assert sorted(shuffled) == sorted(in_order) and shuffled != in_order
  assert all(tokenizer_lib.EOS_ID in row for row in pairs["prompts"])  # BOS source EOS, then PAD

  real = evaluate.evaluate_task(str(seq2seq_workdir), "seq2seq", num_examples=4, candidates=2,
                                draws=3, start=1, ar_temperature=0.7,
                                sample_overrides={"steps": 3, "guidance_scale": 1.0})
  for name in ("diffusion", "ar_baseline"):
    assert real[name]["candidates"] == 2 and real[name]["examples"] == 4
    assert real[name]["accuracy_at_2"] >= real[name]["accuracy_at_1"]
  assert real["draws"] == 3 and real["start"] == 1 and real["ar_baseline"]["temperature"] == 0.7
  assert real["sample_overrides"] == {"steps": 3, "guidance_scale": 1.0}
  written = (seq2seq_workdir / "eval"
             / "task_seq2seq_n4_seed0_start1_draws3_guidance_scale1.0_steps3.json")
  assert json.loads(written.read_text()) == json.loads(evaluate.to_json(real))

  def oracle(draws_of):  # fixed draws per reference instead of the model's
    def candidates(layouts, k, **unused):
      assert k == 5  # the draws, not the k of accuracy@k
      return [draws_of(ref) for ref, _ in zip(pairs["references"], layouts)]
    return candidates

  # the reference wins the vote: first of the ranked list although it is not drawn first
  monkeypatch.setattr(generator, "candidates", oracle(lambda ref: ["zz", ref, "zz", ref, ref]))
  won = tasks.evaluate_seq2seq(generator, data, num_examples=5, k=2, draws=5, seed=0,
                               baseline=False)["diffusion"]
  assert won["accuracy_at_1"] == 1.0 and won["accuracy_at_2"] == 1.0
  # drawn once, and out-voted by two others: not in the top 2 (it would be among 2 of 5 draws)
  monkeypatch.setattr(generator, "candidates", oracle(lambda ref: [ref, "zz", "zz", "yy", "yy"]))
  lost = tasks.evaluate_seq2seq(generator, data, num_examples=5, k=2, draws=5, seed=0,
                                baseline=False)["diffusion"]
  assert lost["accuracy_at_1"] == 0.0 and lost["accuracy_at_2"] == 0.0
  # one distinct draw: a ranked list shorter than k is still scored as accuracy@k
  monkeypatch.setattr(generator, "candidates", oracle(lambda ref: [ref] * 5))
  alone = tasks.evaluate_seq2seq(generator, data, num_examples=5, k=2, draws=5, seed=0,
                                 baseline=False)["diffusion"]
  assert alone["candidates"] == 2 and alone["accuracy_at_2"] == 1.0
  with pytest.raises(ValueError, match="draws"):
    tasks.evaluate_seq2seq(generator, data, num_examples=5, k=3, draws=2, seed=0, baseline=False)


def test_ar_draws_keep_each_prompts_own_draws_in_order():
  class FakeAR:  # draw i of prompt j: the target token 10 * i + j after the prompt's EOS
    def sample(self, n, seed, prompts, temperature):
      rows = prompts.copy()
      eos = np.argmax(rows == tokenizer_lib.EOS_ID, axis=1)
      rows[np.arange(n), eos + 1] = 10 * seed + np.arange(n) + temperature
      return rows

  decoder = types.SimpleNamespace(decode=lambda rows: [" ".join(map(str, r)) for r in rows])
  prompts = np.full((3, 6), tokenizer_lib.PAD_ID, np.int32)
  prompts[:, :3] = [tokenizer_lib.BOS_ID, 7, tokenizer_lib.EOS_ID]
  draws = tasks.ar_draws(FakeAR(), decoder, prompts, 4, seed=0, temperature=0)
  pad = " ".join([str(tokenizer_lib.PAD_ID)] * 2)
  assert draws == [[f"{10 * i + j} {pad}" for i in range(4)] for j in range(3)]


@pytest.mark.slow
def test_the_evaluate_cli_runs_the_seq2seq_task(seq2seq_workdir, tmp_path):
  """`cdm-evaluate --task=seq2seq` end to end: the printed JSON is the saved one."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import ROOT  # pylint: disable=g-import-not-at-top
  result = subprocess.run(
      [sys.executable, "-m", "cdm_jax.cli.evaluate", f"--workdir={seq2seq_workdir}",
       "--task=seq2seq", "--num_examples=3", "--candidates=2", "--steps=2", "--nobaseline",
       "--start=2"], capture_output=True, text=True, cwd=ROOT, timeout=600,
      env={**os.environ, "CDM_JAX_CACHE": str(tmp_path / "cache")})
  assert result.returncode == 0, result.stderr[-3000:]
  printed = json.loads(result.stdout)
  assert printed["result_file"] == "task_seq2seq_n3_seed0_start2_num_steps2.json"
  assert printed["diffusion"]["candidates"] == 2 and printed["diffusion"]["examples"] == 3
  assert printed["start"] == 2 and printed["sample_overrides"] == {"num_steps": 2}
  assert json.loads((seq2seq_workdir / "eval" / printed["result_file"]).read_text()) == printed
