"""Conditional tasks scored on held-out data: seq2seq (BLEU, ROUGE-L, exact match @1 / @k) and
infilling (token accuracy of the filled span), for the diffusion model and for the library's AR
model used as a prefix LM, trained on the same rows for the same analytic training FLOPs.

`cdm-evaluate --workdir=DIR --task=seq2seq|infill` runs these.
"""

import dataclasses
import logging
import re
import time

import numpy as np

from cdm_jax.core import conditioning
from cdm_jax.models import builders
from cdm_jax.training import autoencoder, flops
from cdm_jax import sampling
from cdm_jax.evaluation import ar_model as judge_lib
from cdm_jax.data import encoding, pipeline, tokenizer as tokenizer_lib

log = logging.getLogger(__name__)


def _words(text: str) -> list[str]:
  """Lower-cased whitespace words: what exact match and the vote compare."""
  return text.lower().split()


def rouge_tokens(text: str) -> list[str]:
  """Tokens as the `rouge-score` package's default tokenizer makes them (no stemming): lower case,
  every run of characters other than a-z and 0-9 a separator, so scores compare with published
  ones."""
  return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: list, b: list) -> int:
  """Length of the longest common subsequence (dynamic programming, O(len(a) len(b)))."""
  previous = [0] * (len(b) + 1)
  for x in a:
    current = [0]
    for j, y in enumerate(b):
      current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
    previous = current
  return previous[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
  """ROUGE-L F1 over `rouge-score`'s tokens: the LCS's harmonic mean of precision and recall."""
  hyp, ref = rouge_tokens(hypothesis), rouge_tokens(reference)
  if not hyp or not ref:
    return float(hyp == ref)
  lcs = lcs_length(hyp, ref)
  return 0.0 if lcs == 0 else 2.0 * lcs / (len(hyp) + len(ref))


def corpus_bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
  """sacrebleu's corpus BLEU (13a tokenization, exponential smoothing) and its signature."""
  import sacrebleu  # pylint: disable=g-import-not-at-top
  bleu = sacrebleu.BLEU()
  score = bleu.corpus_score(hypotheses, [references])
  return float(score.score), str(bleu.get_signature())


def same_text(a: str, b: str) -> bool:
  return _words(a) == _words(b)


def rank_by_votes(draws: list[str], k: int) -> list[str]:
  """The k most frequent distinct texts among `draws` (texts compared as lower-cased words; ties
  in first-drawn order; empty texts dropped): a ranked list for accuracy@k, whose first entry is
  the majority vote, i.e. the minimum-Bayes-risk pick under exact-match utility."""
  counts, first = {}, {}
  for text in draws:
    key = tuple(_words(text))
    if key:
      counts[key] = counts.get(key, 0) + 1
      first.setdefault(key, text)
  ranked = sorted(counts, key=lambda key: -counts[key])  # stable: ties stay in first-drawn order
  return [first[key] for key in ranked[:k]]


def seq2seq_scores(candidates: list[list[str]], references: list[str],
                   k: int | None = None) -> dict:
  """Scores a ranked list of up to k candidates per source against one reference each: BLEU and
  ROUGE-L of the first candidate (an empty list counts as the empty text), exact match of the
  first (accuracy@1) and of any (accuracy@k). k defaults to the first list's length."""
  if len(candidates) != len(references) or not references:
    raise ValueError(f"{len(candidates)} candidate lists for {len(references)} references.")
  k = len(candidates[0]) if k is None else k
  if any(len(c) > k for c in candidates):
    raise ValueError(f"A candidate list is longer than k={k}.")
  firsts = [c[0] if c else "" for c in candidates]
  bleu, signature = corpus_bleu(firsts, references)
  return {"bleu": bleu, "bleu_signature": signature,
          "rouge_l": float(np.mean([rouge_l(h, r) for h, r in zip(firsts, references)])),
          "accuracy_at_1": float(np.mean([same_text(h, r) for h, r in zip(firsts, references)])),
          f"accuracy_at_{k}": float(np.mean([any(same_text(h, r) for h in c)
                                             for c, r in zip(candidates, references)])),
          "examples": len(references), "candidates": k}


def matched_ar_budget(config, diffusion_steps: int) -> judge_lib.JudgeConfig:
  """The AR baseline of the diffusion model's transformer sizes, trained for the steps whose
  analytic FLOPs equal `diffusion_steps` of the diffusion config (same batch and rows), plus a
  latent model's autoencoder stage."""
  m, d = config.model, config.data
  ar_step = flops.ar_train_flops(width=m.width, num_layers=m.num_layers, mlp_dim=m.mlp_dim,
                                 seq_len=d.seq_len, vocab_size=d.vocab_size,
                                 batch_size=config.train.batch_size)
  total = diffusion_steps * flops.diffusion_train_flops(config)["train"]
  if builders.is_latent(config):
    total += autoencoder.autoencoder_flops(config)
  steps = max(1, round(total / ar_step))
  return dataclasses.replace(judge_lib.JudgeConfig(max_steps=steps, time_limit_minutes=0.0),
                             width=m.width, num_layers=m.num_layers, num_heads=m.num_heads,
                             mlp_dim=m.mlp_dim, batch_size=config.train.batch_size,
                             learning_rate=config.train.learning_rate,
                             warmup_steps=min(config.train.warmup_steps, max(1, steps // 10)))


def ar_baseline(generator: sampling.Generator, data: pipeline.Dataset) -> judge_lib.Judge:
  """The FLOP-matched AR prefix LM of a workdir's model (`matched_ar_budget`), trained on its
  training rows on first use and cached."""
  config = generator.config
  corpus_id = f"{config.data.corpus}:{config.data.path}:{config.data.valid_percent}:prefix-lm"
  return judge_lib.get_judge(generator.tokenizer, data.train, corpus_id,
                             matched_ar_budget(config, generator.step))


def held_out_pairs(generator: sampling.Generator, data: pipeline.Dataset, start: int,
                   num_examples: int) -> dict:
  """Held-out pairs `start` .. `start + num_examples` of a fixed shuffle (seed 0, whatever the
  sampling seed) of those that keep a target after truncation to seq_len, encoded as in training:
  prompts `BOS source EOS` + PAD, their known masks, the source and reference texts. Shuffled
  because corpus order is not random (WordNet: nouns first, by topic)."""
  if not data.is_seq2seq:
    raise ValueError("--task=seq2seq needs a seq2seq corpus (data.source_field/target_field, or "
                     "wordnet_definitions / wordnet_reverse).")
  rows, _ = encoding.encode(generator.tokenizer, data.valid_text, generator.config.data.seq_len)
  keep = np.flatnonzero(np.sum(rows == tokenizer_lib.EOS_ID, axis=1) >= 2)
  keep = keep[np.random.default_rng(0).permutation(len(keep))][start:start + num_examples]
  if not len(keep):
    raise ValueError(f"No held-out pairs from index {start} on.")
  rows = rows[keep]
  known = np.arange(rows.shape[1]) <= np.argmax(rows == tokenizer_lib.EOS_ID, axis=1)[:, None]
  return {"prompts": np.where(known, rows, tokenizer_lib.PAD_ID).astype(np.int32), "known": known,
          "sources": [data.valid_text[i][0] for i in keep],
          "references": [data.valid_text[i][1] for i in keep]}


def evaluate_seq2seq(generator: sampling.Generator, data: pipeline.Dataset, *, num_examples: int,
                     k: int, seed: int, draws: int = 0, start: int = 0,
                     sample_overrides: dict | None = None, baseline: bool = True,
                     ar_temperature: float = 1.0) -> dict:
  """Diffusion (and, with `baseline`, the FLOP-matched AR prefix LM at `ar_temperature`) on
  `num_examples` held-out pairs from `start` (`held_out_pairs`): each model draws `draws` targets
  per source (default k) and its k most frequent distinct ones are its ranked list
  (`rank_by_votes`), scored by `seq2seq_scores`."""
  draws = draws or k
  if draws < k:
    raise ValueError(f"draws ({draws}) must be >= the candidates k ({k}).")
  pairs = held_out_pairs(generator, data, start, num_examples)
  prompts, sources, references = pairs["prompts"], pairs["sources"], pairs["references"]
  result = {"task": "seq2seq", "checkpoint_step": generator.step, "seed": seed, "start": start,
            "draws": draws}
  t0 = time.perf_counter()
  drawn = generator.candidates(list(zip(prompts, pairs["known"])), draws, seed=seed,
                               target_only=True, **(sample_overrides or {}))
  candidates = [rank_by_votes(group, k) for group in drawn]
  result["diffusion"] = {**seq2seq_scores(candidates, references, k),
                         "sampling_seconds": time.perf_counter() - t0,
                         "examples_shown": _show(sources, candidates, references)}
  if baseline:
    ar = ar_baseline(generator, data)
    ar_candidates = [rank_by_votes(group, k) for group in ar_draws(
        ar, generator, prompts, draws, seed=seed, temperature=ar_temperature)]
    result["ar_baseline"] = {**seq2seq_scores(ar_candidates, references, k), "training": ar.info,
                             "temperature": ar_temperature,
                             "examples_shown": _show(sources, ar_candidates, references)}
  return result


def ar_draws(ar: judge_lib.Judge, generator: sampling.Generator, prompts: np.ndarray, draws: int, *,
             seed: int, temperature: float = 1.0) -> list[list[str]]:
  """`draws` targets per prompt row (`BOS source EOS` + PAD) from the AR prefix LM: the decoded
  text after each sample's first EOS."""
  samples = [ar.sample(len(prompts), seed=seed + i, prompts=prompts, temperature=temperature)
             for i in range(draws)]
  texts = generator.decode([conditioning.target_tokens(row) for s in samples for row in s])
  n = len(prompts)  # texts[i * n + j]: draw i of prompt j
  return [texts[j::n] for j in range(n)]


def _show(sources, candidates, references, n: int = 5) -> list[dict]:
  return [{"source": s, "output": c[0] if c else "", "reference": r}
          for s, c, r in zip(sources[:n], candidates[:n], references[:n])]


def infill_layouts(rows: np.ndarray, seed: int, fraction: float = 0.25) -> np.ndarray:
  """Known masks [n, length] hiding one contiguous span of each row's pieces (between BOS and
  EOS; `fraction` of them, at least one), placed at random (seeded)."""
  rng = np.random.default_rng(seed)
  masks = np.ones(rows.shape, bool)
  for i, row in enumerate(rows):
    eos = int(np.argmax(row == tokenizer_lib.EOS_ID))
    pieces = eos - 1
    span = max(1, round(fraction * pieces))
    start = 1 + rng.integers(0, pieces - span + 1)
    masks[i, start:start + span] = False
  return masks


def evaluate_infill(generator: sampling.Generator, data: pipeline.Dataset, *, num_examples: int,
                    seed: int, sample_overrides: dict | None = None, baseline: bool = True) -> dict:
  """Token accuracy of a hidden span (25% of each held-out row's pieces) for diffusion infilling
  (the rest of the row known) and, with `baseline`, for the AR model completing the prefix before
  the span (it cannot see the text after it)."""
  rows = data.valid[:num_examples]
  rows = rows[np.argmax(rows == tokenizer_lib.EOS_ID, axis=1) >= 2]  # at least one piece
  known = infill_layouts(rows, seed)
  hidden = ~known
  tokens = generator.sample_tokens(len(rows), seed=seed, condition=(rows, known),
                                   **(sample_overrides or {}))
  result = {"task": "infill", "checkpoint_step": generator.step, "seed": seed,
            "examples": int(len(rows)), "hidden_tokens": int(hidden.sum()),
            "diffusion": {"token_accuracy": float(np.mean(tokens[hidden] == rows[hidden]))}}
  if baseline:
    ar = ar_baseline(generator, data)
    starts = np.argmax(hidden, axis=1)
    prompts = np.where(np.arange(rows.shape[1]) < starts[:, None], rows, tokenizer_lib.PAD_ID)
    ar_tokens = ar.sample(len(rows), seed=seed, prompts=prompts.astype(np.int32))
    result["ar_baseline"] = {"token_accuracy": float(np.mean(ar_tokens[hidden] == rows[hidden])),
                             "training": ar.info}
  return result


def continuation_layouts(rows: np.ndarray) -> np.ndarray:
  """Known masks [n, length]: BOS and the first half (rounded down) of each row's pieces (a row cut
  at the sequence length, without EOS, counts the pieces to its end)."""
  pieces = encoding.piece_lengths(rows)
  return np.arange(rows.shape[1]) < (1 + pieces // 2)[:, None]


def continuations(tokens: np.ndarray, known: np.ndarray) -> list[np.ndarray]:
  """The generated part of each row as a user reads it (`tokenizer.decode_tokens`): the pieces
  after its known prefix up to and including the first EOS (to the row's end when there is
  none), PAD dropped."""
  out = []
  for row, mask in zip(tokens, known):
    rest = row[int(mask.sum()):]
    stop = np.flatnonzero(rest == tokenizer_lib.EOS_ID)
    rest = rest[:stop[0] + 1] if len(stop) else rest
    out.append(rest[rest != tokenizer_lib.PAD_ID])
  return out


def _conditional_nll(judge: judge_lib.Judge, prefixes: list[np.ndarray],
                     continuation_rows: list[np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Per row: the judge's NLL sum of the continuation after the prefix, and its token count
  (the chain rule: the joined row's NLL less the prefix's; joined rows are cut at seq_len)."""
  def rows(parts):
    out = np.full((len(parts), seq_len), tokenizer_lib.PAD_ID, np.int32)
    for i, part in enumerate(parts):
      out[i, :min(len(part), seq_len)] = part[:seq_len]
    return out
  joined = judge.score(rows([np.concatenate([p, c]) for p, c in zip(prefixes, continuation_rows)]))
  alone = judge.score(rows(prefixes))
  return joined["nll"] - alone["nll"], joined["tokens"] - alone["tokens"]


def continuation_scores(judge: judge_lib.Judge, prefixes: list[np.ndarray],
                        continuation_rows: list[np.ndarray], seq_len: int) -> dict:
  """The judge's perplexity of the continuations given their true prefixes; context use: the
  mean per-token NLL (nats) of each continuation after another row's prefix (the next row's)
  less after its own (> 0: the continuation follows its own prefix); mean length in pieces (EOS
  not counted); the share of empty continuations."""
  nll, count = _conditional_nll(judge, prefixes, continuation_rows, seq_len)
  foreign = prefixes[1:] + prefixes[:1]
  nll_f, count_f = _conditional_nll(judge, foreign, continuation_rows, seq_len)
  both = (count > 0) & (count_f > 0)
  per_token = lambda s, c: s[both] / c[both]
  lengths = np.array([len(c) - int(len(c) and c[-1] == tokenizer_lib.EOS_ID)
                      for c in continuation_rows])
  return {"judge_ppl": float(np.exp(nll.sum() / max(count.sum(), 1))),
          "context_use_nats": float(np.mean(per_token(nll_f, count_f) - per_token(nll, count))),
          "mean_length_pieces": float(lengths.mean()), "empty_fraction": float(np.mean(lengths == 0))}


def continuation_judge(generator: sampling.Generator, data: pipeline.Dataset,
                       judge_steps: int = 0) -> judge_lib.Judge:
  """The compute-gap judge (its seed and corpus) sized like the workdir's model, trained for
  `judge_steps` (default: twice the FLOP-matched AR model's steps, as the compute gap's judge of a
  ladder whose 1x rung is this run); recipes compared share it by passing one `judge_steps`."""
  config = generator.config
  steps = judge_steps or 2 * matched_ar_budget(config, generator.step).max_steps
  judge_config = judge_lib.sized_like(config.model, seed=judge_lib.GAP_JUDGE_SEED, max_steps=steps)
  return judge_lib.get_judge(generator.tokenizer, data.train, judge_lib.gap_corpus_id(config.data),
                             judge_config)


def evaluate_continuation(generator: sampling.Generator, data: pipeline.Dataset, *,
                          num_examples: int, seed: int, sample_overrides: dict | None = None,
                          baseline: bool = True, judge_steps: int = 0) -> dict:
  """Prefix continuation on `num_examples` held-out rows with at least two pieces (a fixed
  shuffle, seed 0): BOS and the first half of each row's pieces known, the rest generated by the
  diffusion model and, with `baseline`, by the FLOP-matched AR prefix LM; both scored by
  `continuation_scores` under one judge (`continuation_judge`)."""
  rows = data.valid[np.argmax(data.valid == tokenizer_lib.EOS_ID, axis=1) >= 3]
  rows = rows[np.random.default_rng(0).permutation(len(rows))][:num_examples]
  if not len(rows):
    raise ValueError("No held-out rows with two or more pieces.")
  known = continuation_layouts(rows)
  prompts = np.where(known, rows, tokenizer_lib.PAD_ID).astype(np.int32)
  prefixes = [row[:int(mask.sum())] for row, mask in zip(rows, known)]
  seq_len = rows.shape[1]
  judge = continuation_judge(generator, data, judge_steps)
  result = {"task": "continuation", "checkpoint_step": generator.step, "seed": seed,
            "examples": int(len(rows)), "judge": judge.info}
  t0 = time.perf_counter()
  tokens = generator.sample_tokens(len(rows), seed=seed, condition=(prompts, known),
                                   **(sample_overrides or {}))
  generated = continuations(tokens, known)
  result["diffusion"] = {**continuation_scores(judge, prefixes, generated, seq_len),
                         "sampling_seconds": time.perf_counter() - t0,
                         "examples_shown": _show_continuations(generator, prefixes, generated)}
  real = continuation_scores(judge, prefixes, continuations(rows, known), seq_len)
  result["real"] = real
  if baseline:
    ar = ar_baseline(generator, data)
    ar_generated = continuations(ar.sample(len(rows), seed=seed, prompts=prompts), known)
    result["ar_baseline"] = {**continuation_scores(judge, prefixes, ar_generated, seq_len),
                             "training": ar.info,
                             "examples_shown": _show_continuations(generator, prefixes, ar_generated)}
    result["ppl_ratio_to_ar"] = result["diffusion"]["judge_ppl"] / result["ar_baseline"]["judge_ppl"]
  return result


def _show_continuations(generator, prefixes, generated, n: int = 5) -> list[dict]:
  texts = generator.decode([np.concatenate([p, c]) for p, c in zip(prefixes[:n], generated[:n])])
  return [{"prefix": p, "text": t} for p, t in zip(generator.decode(prefixes[:n]), texts)]
