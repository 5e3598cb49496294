"""The compute gap between a diffusion model and the AR baseline, from measured rows: where the AR
ladder's judge perplexity reaches the diffusion samples' (linear in log budget against log
perplexity), valid only when the diffusion samples' unigram entropy, at one word count, is at most
`ENTROPY_TOLERANCE` nats below AR's there (lower entropy buys perplexity). `experiments/compute_gap.py`
trains the ladder and measures the rows."""

import math

from cdm_jax.evaluation import text_metrics

ENTROPY_TOLERANCE = 0.1  # nats


def match_budget(rungs: list[dict], target_ppl: float, key: str = "unigram_entropy") -> dict:
  """Where AR's judge perplexity falls to `target_ppl`, from rungs sorted by budget (each with
  "flops", "judge_ppl" and the entropy `key`): the first crossing from the smallest budget.

  Returns {"status": "matched", "flops", "unigram_entropy"} (both interpolated, linearly in log
  budget against log perplexity), or "behind_smallest" / "ahead_of_largest" with the end rung.
  """
  if target_ppl >= rungs[0]["judge_ppl"]:
    return {"status": "behind_smallest", "flops": rungs[0]["flops"]}
  for low, high in zip(rungs, rungs[1:]):
    if low["judge_ppl"] > target_ppl >= high["judge_ppl"]:
      frac = (math.log(low["judge_ppl"]) - math.log(target_ppl)) / (
          math.log(low["judge_ppl"]) - math.log(high["judge_ppl"]))
      log_flops = math.log(low["flops"]) + frac * (math.log(high["flops"]) - math.log(low["flops"]))
      entropy = low[key] + frac * (high[key] - low[key])
      return {"status": "matched", "flops": math.exp(log_flops), "unigram_entropy": entropy}
  return {"status": "ahead_of_largest", "flops": rungs[-1]["flops"]}


def compute_gap(diffusion: dict, rungs: list[dict], key: str = "unigram_entropy") -> dict:
  """The gap and its validity for a diffusion row ("flops", "judge_ppl" and the entropy `key`,
  which the rule compares). The entropy rule applies to bounds too: against the end rung they are
  measured from."""
  match = match_budget(rungs, diffusion["judge_ppl"], key)
  ratio = diffusion["flops"] / match["flops"]
  end = {"behind_smallest": rungs[0], "ahead_of_largest": rungs[-1]}.get(match["status"])
  ar_entropy = match["unigram_entropy"] if end is None else end[key]
  out = {"status": match["status"], "matched_ar_flops": match["flops"],
         "ar_unigram_entropy_at_match": ar_entropy,
         "entropy_valid": diffusion[key] >= ar_entropy - ENTROPY_TOLERANCE,
         "compute_gap": ratio if end is None else None}
  if match["status"] == "behind_smallest":
    out["compute_gap_lower_bound"] = ratio
  elif match["status"] == "ahead_of_largest":
    out["compute_gap_upper_bound"] = ratio
  return out


EQUAL_WORDS = "unigram_entropy_equal_words"


def equal_word_entropies(rows: list[dict]) -> int:
  """Gives every row (with its "texts", which it drops) the unigram entropy of its samples at the
  word count of the shortest sample set, `EQUAL_WORDS`, which the entropy rule compares: longer
  samples would otherwise score a higher entropy for their length alone. Returns that count."""
  texts = [row.pop("texts") for row in rows]
  count = min(sum(len(text_metrics.words(t)) for t in group) for group in texts)
  for row, group in zip(rows, texts):
    row[EQUAL_WORDS] = text_metrics.unigram_entropy_at(group, count)
  return count


def gap_figure(gap: float | None, status: str, bound: float | None) -> str:
  """"16.60x", or a bound: "> 64x" behind the smallest rung, "< 1.00x" ahead of the largest."""
  if gap is not None:
    return f"{gap:.2f}x"
  return f"> {bound:.0f}x" if status == "behind_smallest" else f"< {bound:.2f}x"


def describe_gap(gap: dict) -> str:
  """"16.6x (valid)", "> 64x (...)", "< 1.00x (...)", with the entropy verdict."""
  bound = gap.get("compute_gap_lower_bound", gap.get("compute_gap_upper_bound"))
  text = gap_figure(gap["compute_gap"], gap["status"], bound)
  if gap["compute_gap"] is None:
    text += (" (behind the smallest rung)" if gap["status"] == "behind_smallest" else
             " (ahead of the largest rung)")
  verdict = ("valid" if gap["entropy_valid"] else
             f"GAMED: diffusion entropy below AR's {gap['ar_unigram_entropy_at_match']:.2f} - 0.1")
  return f"{text}, {verdict}"
