"""Sample-quality statistics on word level: diversity, self-BLEU, novelty, copying, length."""

import collections

import numpy as np


def words(text: str) -> list[str]:
  return text.lower().split()


def ngrams(tokens: list[str], n: int) -> list[tuple]:
  return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
  """Unique n-grams / all n-grams over the whole set (Li et al. 2016)."""
  grams = [g for t in texts for g in ngrams(words(t), n)]
  return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: list[str], max_hypotheses: int = 200, seed: int = 0) -> float | None:
  """Mean sentence BLEU-4 (sacrebleu, exponential smoothing) of each text against all the others.

  O(n^2): scored for at most `max_hypotheses` texts drawn at random, each against every other text.
  """
  import sacrebleu  # pylint: disable=g-import-not-at-top
  nonempty = [t for t in texts if t.strip()]
  if len(nonempty) < 2:
    return None
  order = np.random.default_rng(seed).permutation(len(nonempty))[:max_hypotheses]
  bleu = sacrebleu.BLEU(effective_order=True)
  scores = [bleu.sentence_score(nonempty[i], nonempty[:i] + nonempty[i + 1:]).score for i in order]
  return float(np.mean(scores))


class TrainingSetIndex:
  """The training set's 4-grams and whole lines, for novelty and copy rates."""

  def __init__(self, train_texts: list[str], n: int = 4):
    self.n = n
    self.lines = {" ".join(words(t)) for t in train_texts}
    self.grams = {g for t in train_texts for g in ngrams(words(t), n)}

  def novelty(self, texts: list[str]) -> float:
    grams = [g for t in texts for g in ngrams(words(t), self.n)]
    return float(np.mean([g not in self.grams for g in grams])) if grams else 0.0

  def copy_rate(self, texts: list[str]) -> float:
    nonempty = [t for t in texts if t.strip()]
    if not nonempty:
      return 0.0
    return float(np.mean([" ".join(words(t)) in self.lines for t in nonempty]))


def unigram_entropy(texts: list[str]) -> float:
  """Entropy (nats) of the word distribution pooled over `texts`: low values flag repetitive output
  that buys a low perplexity (reported beside generative perplexity, as the field does)."""
  counts = collections.Counter(w for t in texts for w in words(t))
  total = sum(counts.values())
  if not total:
    return 0.0
  probs = np.array(list(counts.values()), np.float64) / total
  return float(-np.sum(probs * np.log(probs)))


def unigram_entropy_at(texts: list[str], num_words: int, *, draws: int = 20,
                       seed: int = 0) -> float:
  """`unigram_entropy` at a fixed number of words: its mean over `draws` random subsets of exactly
  `num_words` of the words pooled over `texts` (all of them when there are no more). The plug-in
  entropy grows with the words pooled (its bias is about -(K - 1) / 2N nats for K distinct words
  in N), so sample sets of different lengths compare fairly only at one word count."""
  pooled = [w for t in texts for w in words(t)]
  if num_words >= len(pooled):
    return unigram_entropy(texts)
  rng = np.random.default_rng(seed)
  return float(np.mean([unigram_entropy([" ".join(rng.choice(pooled, num_words, replace=False))])
                        for _ in range(draws)]))


def text_statistics(texts: list[str], index: TrainingSetIndex | None = None) -> dict:
  lengths = [len(words(t)) for t in texts]
  stats = {
      "num_texts": len(texts),
      "mean_length_words": float(np.mean(lengths)) if texts else 0.0,
      "empty_fraction": float(np.mean([n == 0 for n in lengths])) if texts else 0.0,
      "distinct_1": distinct_n(texts, 1),
      "distinct_2": distinct_n(texts, 2),
      "distinct_3": distinct_n(texts, 3),
      "unigram_entropy": unigram_entropy(texts),
      "self_bleu_4": self_bleu(texts),
  }
  if index is not None:
    stats["novelty_4gram"] = index.novelty(texts)
    stats["copy_rate"] = index.copy_rate(texts)
  return stats
