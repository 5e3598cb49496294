"""Controlled generation on a trained WordNet workdir (corpus "wordnet"), Diffusion-LM style.

* Part of speech: each WordNet example carries the part of speech of the file it came from (noun /
  verb / adj / adv). A classifier of noisy latents (`classifier.NoisyClassifier`, the diffusion model
  frozen) steers sampling at several guidance scales, either on x_t (`--pos_guides=noisy`) or on
  the denoiser's estimate x0_hat through the denoiser (`estimate`; `estimate_trained`: the same
  with a classifier trained on the denoiser's estimates rather than on x_t); success is judged by a
  *separate* classifier trained on clean token ids (bag of learned embeddings), and fluency by the
  AR judge's perplexity.
* Length (label-free): a template `___:N` fixes N generated positions between a known BOS and a
  known EOS; success is exactly N real pieces (no PAD/EOS chosen inside the gap). At a scale > 0
  the sampler is also steered away from PAD/EOS/BOS in the gap by the gradient of the model's own
  read-out (`guidance.readout_guided`).

python experiments/control.py --workdir=DIR [--labels=verb,adj --scales=0,1,3 --num_samples=100]
    [--pos_guides=noisy,estimate]
    [--tasks=part_of_speech,length --lengths=5,10,20 --length_scales=0,1,4]
Writes DIR/eval/control.json and prints a table.
"""

import argparse
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cdm_jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from cdm_jax.core import conditioning  # pylint: disable=g-import-not-at-top,wrong-import-position
from cdm_jax.evaluation import evaluate
from cdm_jax import sampling
from cdm_jax.core import guidance
from cdm_jax.posttrain import classifier
from cdm_jax.evaluation import ar_model as judge_lib
from cdm_jax.evaluation import text_metrics
from cdm_jax.data import corpora, encoding, pipeline, tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

LABELS = ("noun", "verb", "adj", "adv")


def labeled_rows(tokenizer, seq_len: int):
  """(train rows, train labels, valid rows, valid labels): WordNet examples split like the corpus."""
  label_of = {}
  for text, label in corpora.read_wordnet_labeled():
    label_of.setdefault(text, LABELS.index(label))
  train, valid = encoding.split_examples(list(label_of), 2.0)
  out = []
  for texts in (train, valid):
    rows, _ = encoding.encode(tokenizer, texts, seq_len)
    out += [rows, np.array([label_of[t] for t in texts], np.int32)]
  return out


def train_text_classifier(rows, labels, vocab_size: int, *, steps: int = 2000, seed: int = 1):
  """A clean-text judge: mean of learned token embeddings (PAD excluded) -> linear -> labels."""
  key = jax.random.PRNGKey(seed)
  params = {"embed": 0.02 * jax.random.normal(key, (vocab_size, 64)),
            "out": jnp.zeros((64, len(LABELS))), "bias": jnp.zeros(len(LABELS))}

  def logits_fn(p, tokens):
    seen = (tokens != tokenizer_lib.PAD_ID)[..., None]
    pooled = jnp.sum(p["embed"][tokens] * seen, 1) / jnp.maximum(jnp.sum(seen, 1), 1)
    return pooled @ p["out"] + p["bias"]

  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(p, s, tokens, y):
    loss, grads = jax.value_and_grad(lambda q: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits_fn(q, tokens), y)))(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    batch = rng.integers(0, len(rows), 256)
    params, opt_state, _ = step(params, opt_state, rows[batch], labels[batch])
  predict = jax.jit(lambda tokens: jnp.argmax(logits_fn(params, tokens), -1))
  return lambda tokens: np.concatenate([np.asarray(predict(tokens[i:i + 512]))
                                        for i in range(0, len(tokens), 512)])


def perplexity(judge, rows: np.ndarray) -> float:
  scored = judge.score(rows)
  return float(np.exp(scored["nll"].sum() / max(scored["tokens"].sum(), 1)))


def _pos_guide(args, g, classifiers: dict, index: int, kind: str, scale: float):
  """The guide of one part-of-speech row: None for "none"; "noisy": `classifier_guided` by the
  noisy-latent classifier on x_t (Diffusion-LM); "estimate": `readout_guided` by the same
  classifier read at its clean end (t = 0) on the denoiser's estimate x0_hat, the gradient taken
  through the denoiser (universal guidance's forward term); "estimate_trained": as "estimate" with
  the classifier trained on the denoiser's estimates. `classifiers`: kind -> (module, params)."""
  if kind == "none":
    return None
  log_prob = classifier.label_log_prob(*classifiers[kind], g.schedule, index)
  if kind == "noisy":
    return lambda f: guidance.classifier_guided(f, log_prob, g.schedule, scale,
                                                min_log_snr=args.min_log_snr)
  clean = lambda x0_hat: log_prob(x0_hat, jnp.zeros(x0_hat.shape[0]))
  return lambda f: guidance.readout_guided(f, clean, g.schedule, scale,
                                           min_log_snr=args.min_log_snr)


def _estimate_fn(g):
  """(x_t, t) -> x0_hat as the sampler makes it: with self-conditioning, a second pass fed the
  first pass's estimate."""
  denoise = sampling.make_denoise_fn(g.model, g.params, g.schedule)

  def estimate(x_t, t):
    first = denoise(x_t, t, jnp.zeros_like(x_t))
    return denoise(x_t, t, first) if g.config.model.self_conditioning else first
  return estimate


def _guide_classifiers(args, g, rows, labels, kinds) -> tuple[dict, dict]:
  """The classifiers `kinds` need: (kind -> (module, params), kind -> training info)."""
  classifiers, infos = {}, {}
  config = classifier.ClassifierConfig(steps=args.classifier_steps)
  for kind in sorted(set(kinds) - {"none"}):
    trained = "estimate_trained" if kind == "estimate_trained" else "noisy"
    if trained not in infos:
      estimate_fn = _estimate_fn(g) if trained == "estimate_trained" else None
      module, params, infos[trained] = classifier.train_noisy_classifier(
          g.model, g.params, g.schedule, rows, labels, num_labels=len(LABELS), config=config,
          estimate_fn=estimate_fn)
      classifiers[trained] = (module, params)
    classifiers[kind] = classifiers[trained]
  return classifiers, infos


def part_of_speech(args, g, judge, data) -> list[dict]:
  train_rows, train_y, valid_rows, valid_y = data
  t0 = time.perf_counter()
  clean = train_text_classifier(train_rows, train_y, g.config.data.vocab_size)
  judge_accuracy = float(np.mean(clean(valid_rows) == valid_y))
  scales = [float(s) for s in args.scales.split(",")]
  # Per label: the unguided row once (when a scale is 0), then every guide at every other scale.
  cells = [("none", 0.0)] * (0.0 in scales) + [
      (kind, scale) for kind in args.pos_guides.split(",") for scale in scales if scale]
  classifiers, infos = _guide_classifiers(args, g, train_rows, train_y, [k for k, _ in cells])
  logging.info("classifiers trained in %.0f s; clean judge accuracy %.3f", time.perf_counter() - t0,
               judge_accuracy)
  results = []
  predicted = clean(valid_rows)
  for label in args.labels.split(","):
    index = LABELS.index(label)
    # The ceiling real text sets: the share of held-out texts of this label the judge calls it.
    recall = float(np.mean(predicted[valid_y == index] == index))
    for kind, scale in cells:
      guide = _pos_guide(args, g, classifiers, index, kind, scale)
      texts = (g.sample(args.num_samples, seed=args.seed, steps=args.steps) if guide is None else
               g.sample_guided(args.num_samples, guide, seed=args.seed, steps=args.steps))
      rows, _ = encoding.encode(g.tokenizer, texts, g.config.data.seq_len)
      stats = text_metrics.text_statistics(texts)
      results.append({"label": label, "guide": kind, "scale": scale,
                      "success": float(np.mean(clean(rows) == index)),
                      "judge_recall_on_real_text": recall, "judge_ppl": perplexity(judge, rows),
                      "unigram_entropy": stats["unigram_entropy"],
                      "mean_length_words": stats["mean_length_words"], "examples": texts[:5]})
      print(json.dumps({k: v for k, v in results[-1].items() if k != "examples"}), flush=True)
  return [{"clean_judge_valid_accuracy": judge_accuracy,
           **{f"{name}_classifier": info for name, info in infos.items()}}] + results


def length(args, g, judge) -> list[dict]:
  """Per target length N and guidance scale: the share of `___:N` samples whose gap holds N real
  pieces, steered at scale > 0 by `guidance.readout_guided` away from PAD/EOS/BOS in the gap (the
  model's own read-out as the classifier), and the judge's perplexity of the samples."""
  results = []
  seq_len = g.config.data.seq_len
  special = [tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID, tokenizer_lib.BOS_ID]
  readout = lambda x0: g.model.apply(g.params, x0, method="readout")
  free_rows, _ = encoding.encode(g.tokenizer, g.sample(args.num_samples, seed=args.seed,
                                                        steps=args.steps), seq_len)
  free_len = np.argmax(free_rows == tokenizer_lib.EOS_ID, axis=1) - 1
  free_ppl = perplexity(judge, free_rows)
  for n in (int(x) for x in args.lengths.split(",")):
    known, mask = conditioning.template_layout(g.tokenizer, f"___:{n}", seq_len)
    objective = guidance.real_token_log_prob(readout, jnp.asarray(~mask), special)
    for scale in (float(s) for s in args.length_scales.split(",")):
      guide = None if scale == 0 else (
          lambda f, s=scale: guidance.readout_guided(f, objective, g.schedule, s,
                                                     min_log_snr=args.min_log_snr))
      tokens = g.sample_tokens(args.num_samples, seed=args.seed, steps=args.steps, guide=guide,
                               condition=(np.stack([known] * args.num_samples),
                                          np.stack([mask] * args.num_samples)))
      real = ~np.isin(tokens[:, ~mask], special)
      results.append({"length": n, "scale": scale, "exact": float(np.mean(real.all(axis=1))),
                      "unguided_exact": float(np.mean(free_len == n)),
                      "judge_ppl": perplexity(judge, tokens), "free_judge_ppl": free_ppl,
                      "examples": g.decode(tokens)[:5]})
      print(json.dumps({k: v for k, v in results[-1].items() if k != "examples"}), flush=True)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--labels", default="verb,adj")
  parser.add_argument("--scales", default="0,1,3")
  parser.add_argument("--pos_guides", default="noisy",
                      help="part-of-speech guides: noisy (classifier on x_t), estimate (the "
                           "classifier on the denoiser's x0_hat, through the denoiser) and/or "
                           "estimate_trained (as estimate, the classifier trained on x0_hat)")
  parser.add_argument("--lengths", default="5,10,20")
  parser.add_argument("--length_scales", default="0,1,4",
                      help="readout guidance scales for length control (0: the template alone)")
  parser.add_argument("--tasks", default="part_of_speech,length")
  parser.add_argument("--num_samples", type=int, default=100)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--classifier_steps", type=int, default=600)
  parser.add_argument("--min_log_snr", type=float, default=-4.0,
                      help="guide only where log-SNR >= this (see guidance.classifier_guided)")
  parser.add_argument("--judge_minutes", type=float, default=4.0)
  parser.add_argument("--gap_judge_steps", type=int, default=0,
                      help="> 0: judge fluency with compute_gap.py's judge of this many steps "
                           "(626 for the 300-step ladder of experiments/quality/)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  unknown = set(args.tasks.split(",")) - {"part_of_speech", "length"}
  if unknown:
    parser.error(f"unknown --tasks {sorted(unknown)}; choose from part_of_speech, length")
  if set(args.pos_guides.split(",")) - {"noisy", "estimate", "estimate_trained"}:
    parser.error(f"unknown --pos_guides {args.pos_guides!r}; choose from noisy, estimate, "
                 "estimate_trained")
  logging.basicConfig(level=logging.INFO, force=True)
  g = cdm_jax.load(args.workdir)
  if g.config.data.corpus != "wordnet":
    raise SystemExit("control.py needs a workdir trained on the 'wordnet' corpus.")
  if args.gap_judge_steps:  # the cached judge of experiments/compute_gap.py
    train = pipeline.prepare_data(g.config.data, args.workdir).train
    judge = judge_lib.get_judge(g.tokenizer, train, judge_lib.gap_corpus_id(g.config.data),
                                judge_lib.sized_like(g.config.model, seed=judge_lib.GAP_JUDGE_SEED,
                                                     max_steps=args.gap_judge_steps))
  else:
    _, _, judge = evaluate.load_for_evaluation(args.workdir,
                                               judge_lib.judge_budget(args.judge_minutes))
  result = {"workdir": args.workdir, "checkpoint_step": g.step, "args": vars(args)}
  tasks = args.tasks.split(",")
  if "part_of_speech" in tasks:
    data = labeled_rows(g.tokenizer, g.config.data.seq_len)
    result["part_of_speech"] = part_of_speech(args, g, judge, data)
  if "length" in tasks:
    result["length"] = length(args, g, judge)
  out = pathlib.Path(args.workdir) / "eval" / "control.json"
  out.parent.mkdir(exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
