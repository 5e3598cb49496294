"""Self-contained, offline evaluation of a trained workdir; prints one JSON object.

`cdm-evaluate --workdir=DIR [--num_samples=1000 --sampler --steps --clamp --seed]` runs it.

Diffusion samples, AR-baseline samples and real held-out text are scored the same way: perplexity
under the project's own AR judge (trained once per corpus + tokenizer, cached), diversity,
self-BLEU, novelty and copying against the training set, length, empties and MAUVE on judge
features; beside them the diffusion model's likelihood bound and the judge's NLL on the valid split.
"""

import contextlib
import dataclasses
import json
import logging
import math
import time

import jax
import numpy as np

from cdm_jax.core import diffusion
from cdm_jax.runtime import fs
from cdm_jax import sampling
from cdm_jax.training import steps
from cdm_jax.evaluation import tasks
from cdm_jax.evaluation import text_metrics
from cdm_jax.evaluation import ar_model as judge_lib
from cdm_jax.data import encoding, pipeline, tokenizer as tokenizer_lib

log = logging.getLogger(__name__)

LOG_SNR_CAPS = (None, 8.0, 6.0, 4.0, 2.0, 0.0)


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 0) -> float | None:
  """MAUVE (Pillutla et al. 2021) between two feature sets; None without the optional extra."""
  try:
    import mauve  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if min(len(p_features), len(q_features)) < 10:
    return None
  # One OpenMP/BLAS thread for faiss's k-means and the PCA: the sets are small, and spinning OpenMP
  # workers beside XLA's thread pool on a busy machine can stall for minutes.
  with _one_native_thread():
    result = mauve.compute_mauve(p_features=p_features, q_features=q_features, seed=seed,
                                 num_buckets=max(2, min(len(p_features), len(q_features)) // 10),
                                 verbose=False)
  return float(result.mauve)


def _one_native_thread():
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpoolctl.threadpool_limits(limits=1)


class Scorer:
  """Scores sets of texts against one reference set of real held-out text."""

  def __init__(self, judge: judge_lib.Judge, tokenizer, seq_len: int, reference_texts: list[str], *,
               train_index: text_metrics.TrainingSetIndex | None, seed: int = 0):
    self.judge, self.tokenizer, self.seq_len, self.seed = judge, tokenizer, seq_len, seed
    self.index = train_index
    ref = self._judge_stats(reference_texts)
    self.reference_ppl, self.reference_features = ref["ppl"], ref["features"]

  def _judge_stats(self, texts: list[str]) -> dict:
    nonempty = [t for t in texts if t.strip()]
    if not nonempty:
      return {"ppl": float("nan"), "features": np.zeros((0, 1))}
    rows, _ = encoding.encode(self.tokenizer, nonempty, self.seq_len, "truncate", "scored texts")
    scores = self.judge.score(rows)
    ppl = float(np.exp(np.sum(scores["nll"]) / np.sum(scores["tokens"])))
    return {"ppl": ppl, "features": scores["features"]}

  def score(self, texts: list[str]) -> dict:
    """Judge perplexity of the non-empty texts, its ratio to real text, MAUVE, text statistics."""
    stats = self._judge_stats(texts)
    return {"judge_ppl": stats["ppl"], "judge_ppl_ratio": stats["ppl"] / self.reference_ppl,
            "mauve": mauve_score(stats["features"], self.reference_features, self.seed),
            **text_metrics.text_statistics(texts, self.index)}


def likelihood_on_valid(generator: sampling.Generator, judge: judge_lib.Judge, valid: np.ndarray, *,
                        batch_size: int, max_batches: int, seed: int) -> dict:
  """The diffusion bound and the judge's NLL on the same valid rows, both per real token.

  Real tokens = every non-PAD target after BOS (EOS included): the diffusion bound covers the
  whole padded sequence, whose PAD tail is fixed by the EOS, so both are -log p(sequence) / tokens.
  """
  mesh = generator.mesh
  batch_size = max(mesh.devices.size, batch_size - batch_size % mesh.devices.size)
  num_batches = min(max_batches, len(valid) // batch_size)
  if num_batches == 0:
    return {}
  rows = valid[:num_batches * batch_size]
  real_tokens = float(np.sum(rows[:, 1:] != tokenizer_lib.PAD_ID))
  # Every lower end gives a valid bound; report the tightest of a fixed set (and all of them).
  bounds = {}
  for log_snr_max in LOG_SNR_CAPS:
    bound_fn = steps.make_bound_fn(generator.model, generator.schedule, mesh, log_snr_max)
    sums = steps.bound_sums(bound_fn, generator.params, rows, batch_size=batch_size,
                            num_batches=num_batches, seed=seed, mesh=mesh)
    bounds[str(log_snr_max)] = float(sums["total"]) / real_tokens
  best_cap = min(bounds, key=bounds.get)
  bound = bounds[best_cap]
  judge_nll = float(np.sum(judge.score(rows)["nll"]))
  return {"diffusion_bound_nats_per_token": bound, "bound_log_snr_max": best_cap,
          "bound_by_log_snr_max": bounds,
          "diffusion_bound_bits_per_token": diffusion.nats_to_bits(bound),
          "judge_nll_nats_per_token": judge_nll / real_tokens,
          "judge_nll_bits_per_token": diffusion.nats_to_bits(judge_nll / real_tokens),
          "valid_sequences": int(len(rows)), "valid_tokens": int(real_tokens)}


def load_for_evaluation(workdir: str, judge_config: judge_lib.JudgeConfig):
  """(generator, dataset, judge) for a workdir; the judge is the cached one for its corpus, with
  the transformer sizes of the workdir's diffusion model and `judge_config`'s training budget."""
  generator = sampling.load(workdir)
  data_config = generator.config.data
  data = pipeline.prepare_data(data_config, workdir)
  corpus_id = (f"{data_config.corpus}:{data_config.path}:{data_config.max_examples}:"
               f"{data_config.valid_percent}")
  model = generator.config.model
  judge_config = dataclasses.replace(judge_config, width=model.width, num_layers=model.num_layers,
                                     num_heads=model.num_heads, mlp_dim=model.mlp_dim)
  judge = judge_lib.get_judge(generator.tokenizer, data.train, corpus_id, judge_config)
  return generator, data, judge


def shuffled_real_sets(valid_text: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
  """Two disjoint random sets of n held-out texts: references, and real text scored as samples.

  Random, because corpus order is not (WordNet: nouns, then verbs, ...).
  """
  order = np.random.default_rng(seed).permutation(len(valid_text))
  return [valid_text[i] for i in order[:n]], [valid_text[i] for i in order[n:2 * n]]


def evaluate(workdir: str, *, num_samples: int = 1000, seed: int = 0,
             sample_overrides: dict | None = None,
             judge_config: judge_lib.JudgeConfig = judge_lib.JudgeConfig(),
             ar_temperature: float = 1.0, ar_top_p: float = 1.0, bound_batches: int = 16,
             write: bool = True) -> dict:
  """Scores `num_samples` diffusion samples (the config's sampling options with
  `sample_overrides`, see `Generator.options`), as many AR-baseline samples and real held-out
  texts; returns the result (and writes it to DIR/eval/ when `write`)."""
  start = time.perf_counter()
  generator, data, judge = load_for_evaluation(workdir, judge_config)
  n = min(num_samples, len(data.valid_text) // 2)
  if n < num_samples:
    log.warning("Only %d held-out examples: scoring %d samples per set.", len(data.valid_text), n)
  options = generator.options(num_samples=n, **(sample_overrides or {}))
  references, real_as_samples = shuffled_real_sets(data.valid_text, n, seed)
  scorer = Scorer(judge, generator.tokenizer, generator.config.data.seq_len, references,
                  train_index=text_metrics.TrainingSetIndex(data.train_text), seed=seed)
  texts, seconds = {}, {}
  t0 = time.perf_counter()
  texts["diffusion"] = generator.sample(n, seed=seed, **(sample_overrides or {}))
  seconds["diffusion"], t0 = time.perf_counter() - t0, time.perf_counter()
  texts["ar_baseline"] = generator.decode(
      judge.sample(n, seed, temperature=ar_temperature, top_p=ar_top_p))
  seconds["ar_baseline"] = time.perf_counter() - t0
  texts["real"] = real_as_samples
  scored = {name: scorer.score(group) for name, group in texts.items()}
  scored["diffusion"]["sampling_seconds"] = seconds["diffusion"]
  scored["ar_baseline"].update(sampling_seconds=seconds["ar_baseline"], temperature=ar_temperature,
                               top_p=ar_top_p)
  result = {
      "corpus": generator.config.data.corpus, "workdir": str(workdir),
      "checkpoint_step": generator.step, "sampler": options.sampler, "steps": options.num_steps,
      "clamp": options.clamp, "seed": seed, "num_samples": n, "judge_ppl_real": scorer.reference_ppl,
      "judge_ppl_samples": scored["diffusion"]["judge_ppl"],
      "judge_ppl_ratio": scored["diffusion"]["judge_ppl_ratio"], "mauve": scored["diffusion"]["mauve"],
      **scored,
      "likelihood": likelihood_on_valid(generator, judge, data.valid,
                                        batch_size=generator.config.train.batch_size,
                                        max_batches=bound_batches, seed=seed),
      "judge": {**judge.info,
                "diffusion_num_params": int(sum(x.size for x in jax.tree.leaves(generator.params)))},
      "examples": {name: group[:10] for name, group in texts.items()},
  }
  result["wall_seconds"] = time.perf_counter() - start
  result["result_file"] = (f"eval_{options.sampler}_{options.num_steps}_{options.clamp}_n{n}"
                           f"_seed{seed}.json")
  if write:
    save_result(workdir, result)
  return result


def evaluate_task(workdir: str, task: str, *, num_examples: int = 200, seed: int = 0,
                  candidates: int = 10, draws: int = 0, start: int = 0, baseline: bool = True,
                  ar_temperature: float = 1.0, sample_overrides: dict | None = None,
                  write: bool = True, judge_steps: int = 0) -> dict:
  """A conditional task ("seq2seq", "infill" or "continuation", see `tasks`) on the workdir's
  held-out data;
  written to DIR/eval/task_<task>_n<N>_seed<S>[_start<I>][_draws<D>][_<option><value>...].json
  when `write`, one file per sampling option given (e.g. `_guidance_scale2.0`).
  `draws`, `start` and `ar_temperature` are seq2seq's (`tasks.evaluate_seq2seq`); `judge_steps`
  continuation's (`tasks.continuation_judge`)."""
  started = time.perf_counter()
  generator = sampling.load(workdir)
  data = pipeline.prepare_data(generator.config.data, workdir)
  if task == "seq2seq":
    result = tasks.evaluate_seq2seq(generator, data, num_examples=num_examples, k=candidates,
                                    seed=seed, draws=draws, start=start,
                                    sample_overrides=sample_overrides, baseline=baseline,
                                    ar_temperature=ar_temperature)
  elif task == "infill":
    result = tasks.evaluate_infill(generator, data, num_examples=num_examples, seed=seed,
                                   sample_overrides=sample_overrides, baseline=baseline)
  elif task == "continuation":
    result = tasks.evaluate_continuation(generator, data, num_examples=num_examples, seed=seed,
                                         sample_overrides=sample_overrides, baseline=baseline,
                                         judge_steps=judge_steps)
  else:
    raise ValueError(f"Unknown task {task!r}; choose seq2seq, infill or continuation (or use "
                     "evaluate()).")
  result["sample_overrides"] = {k: v for k, v in (sample_overrides or {}).items() if v is not None}
  result["wall_seconds"] = time.perf_counter() - started
  name = f"task_{task}_n{num_examples}_seed{seed}"
  options = "".join(f"_{key}{value}" for key, value in sorted(result["sample_overrides"].items()))
  result["result_file"] = name + (f"_start{start}" if start else "") + (
      f"_draws{draws}" if draws else "") + options + ".json"
  if write:
    save_result(workdir, result)
  return result


def save_result(workdir: str, result: dict):
  """Writes `result` to DIR/eval/<its result_file> (atomically); returns the path."""
  out = fs.path(workdir) / "eval"
  out.mkdir(exist_ok=True)
  path = out / result["result_file"]
  fs.write_atomic(path, to_json(result))
  return path


def _finite_or_none(value):
  if isinstance(value, dict):
    return {key: _finite_or_none(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_none(item) for item in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def to_json(result: dict) -> str:
  """Strict JSON of an evaluation result: non-finite numbers (e.g. the judge perplexity of samples
  that are all empty) become null, since JSON has no NaN."""
  return json.dumps(_finite_or_none(result), indent=2, allow_nan=False, default=str)
