"""Minimum-Bayes-risk selection among sampled candidates (`Generator.sample(mbr=k)`)."""

import numpy as np


def mbr_select(candidates: list[str]) -> int:
  """Index of the minimum-Bayes-risk candidate: the one with the highest mean unigram F1 against
  the others (ties: the first). With one candidate, 0."""
  if len(candidates) < 2:
    return 0
  bags = [_bag(text) for text in candidates]
  scores = [np.mean([_unigram_f1(a, b) for j, b in enumerate(bags) if j != i])
            for i, a in enumerate(bags)]
  return int(np.argmax(scores))


def _bag(text: str) -> dict:
  counts = {}
  for word in text.split():
    counts[word] = counts.get(word, 0) + 1
  return counts


def _unigram_f1(a: dict, b: dict) -> float:
  overlap = sum(min(count, b.get(word, 0)) for word, count in a.items())
  total = sum(a.values()) + sum(b.values())
  return 2.0 * overlap / total if total else 1.0
