"""The compute-gap protocol: measure a trained diffusion workdir against the FLOP-matched AR ladder
(`measure`), and write its table (`write`). `experiments/compute_gap.py` is its command line;
`cdm_jax.evaluation.scaling` runs it at several budgets.

The AR model (the library's causal `TransformerLM`, with the diffusion transformer's sizes, same
data and tokenizer) is trained on a ladder of budgets, each a fraction of the diffusion run's
training FLOPs (counted analytically, self-conditioning's extra forward included: `cdm_jax.training.flops`),
its learning rate annealed over each rung's own steps. One fixed judge that is none of the ladder's
models (its own seed, `judge_multiple` x the largest rung's steps, cached) scores every model's
samples and real held-out text: judge perplexity, word unigram entropy (pooled, nats), MAUVE,
distinct-n, mean length, empty share.

The compute gap is the diffusion budget divided by the AR budget at which AR's samples reach the
diffusion samples' judge perplexity (linear in log budget and log perplexity between the two rungs
around it). It is valid only when the diffusion samples' unigram entropy is at most 0.1 nats below
the AR samples' at that budget (lower entropy buys perplexity), both measured at one word count,
the shortest sample set's (`text_metrics.unigram_entropy_at`: the pooled entropy grows with the
words pooled, so longer samples would pass for their length alone). When diffusion is behind the
smallest rung, the ladder is extended down (halving) while a rung has at least `--min_steps`
steps; past that only a lower bound is reported.

`--lengths=data` samples the diffusion model at lengths drawn from the training split's length
distribution (BOS, N generated pieces, EOS and PAD known: `Generator.sample(lengths=...)`), as
fixed-length diffusion LMs do; the AR rungs choose their own lengths either way.

`--set decoder=contextual` decodes with the workdir's trained read-out decoder (`cdm_jax.posttrain.readout`);
its training FLOPs are added to the diffusion budget, and so are a latent model's autoencoder stage's
(model.encoder="latent"; the frozen encoder's forward in every diffusion step is in the step's count).
"""

import dataclasses
import json
import pathlib
import time
from fractions import Fraction

from cdm_jax.evaluation.ar_model import GAP_JUDGE_SEED
from cdm_jax.evaluation.compute_gap import (EQUAL_WORDS, compute_gap, describe_gap,
                                            equal_word_entropies)
from cdm_jax.runtime import overrides as overrides_lib


@dataclasses.dataclass
class GapSettings:
  """The protocol's settings (experiments/compute_gap.py's flags)."""
  workdir: str
  fractions: str = "1/64,1/32,1/16,1/8,1/4,1/2,1"
  num_samples: int = 300
  seed: int = 0             # sampling and MAUVE seed
  ar_seed: int = 1
  judge_seed: int = GAP_JUDGE_SEED
  judge_multiple: int = 2
  min_steps: int = 4        # smallest AR rung when extending down
  ladder_flops: float = 0.0  # FLOPs of the 1x rung; 0: the workdir's training FLOPs
  ladder_like: str | None = None
  set: list | None = None   # sampling options, FIELD=VALUE
  lengths: str = "free"
  raw_params: bool = False


def measure(args: GapSettings) -> dict:
  """The compute-gap result of `args.workdir` (see the module docstring): the diffusion row, the AR
  ladder's rows, the real text's row and the verdict."""
  # pylint: disable=g-import-not-at-top
  from cdm_jax import sampling
  from cdm_jax.data import pipeline
  from cdm_jax.evaluation import ar_model as judge_lib, evaluate, text_metrics
  from cdm_jax.models import builders
  from cdm_jax.training import flops

  generator = sampling.load(args.workdir, use_ema=not args.raw_params)
  config = generator.config
  data = pipeline.prepare_data(config.data, args.workdir)
  # The ladder and judge take their transformer sizes from --ladder_like's workdir when given, so
  # models of different shapes are measured against one ladder and one judge.
  model = builders.load_config(args.ladder_like).model if args.ladder_like else config.model
  base = judge_lib.sized_like(model)
  ar_step_flops = flops.ar_train_flops(width=model.width, num_layers=model.num_layers,
                                       mlp_dim=model.mlp_dim, seq_len=config.data.seq_len,
                                       vocab_size=config.data.vocab_size, batch_size=base.batch_size)
  diffusion_flops = generator.step * flops.diffusion_train_flops(config)["train"]
  fractions = [Fraction(f) for f in args.fractions.split(",")]
  ladder_flops = args.ladder_flops or diffusion_flops  # the 1x rung
  steps_of = lambda f: max(1, round(float(f) * ladder_flops / ar_step_flops))
  judge_config = dataclasses.replace(base, seed=args.judge_seed,
                                     max_steps=args.judge_multiple * steps_of(max(fractions)))
  corpus_id = judge_lib.gap_corpus_id(config.data)
  judge = judge_lib.get_judge(generator.tokenizer, data.train, corpus_id, judge_config)
  n = min(args.num_samples, len(data.valid_text) // 2)
  references, real = evaluate.shuffled_real_sets(data.valid_text, n, args.seed)
  scorer = evaluate.Scorer(judge, generator.tokenizer, config.data.seq_len, references,
                           train_index=text_metrics.TrainingSetIndex(data.train_text), seed=args.seed)

  ar_row = lambda name, ar_config: _ar_row(name, ar_config, generator, data, corpus_id, judge,
                                           scorer, n, args.seed)
  overrides = overrides_lib.dataclass_overrides(generator.sample_config, args.set or [])
  diffusion = _diffusion_row(generator, data, scorer, args, n, overrides, diffusion_flops)
  ladder = _ladder(base, args, steps_of, ar_step_flops, ar_row, diffusion["judge_ppl"])
  words = equal_word_entropies([diffusion] + ladder)
  real_row = {"name": "real", **scorer.score(real)}
  return {"workdir": args.workdir, "checkpoint_step": generator.step, "num_samples": n,
          "params": "raw" if args.raw_params else "ema",
          "seed": args.seed, "sampling": dataclasses.asdict(generator.options(**overrides)),
          "lengths": args.lengths,
          "judge": judge.info, "ar_step_flops": ar_step_flops, "diffusion": diffusion,
          "ar": ladder, "real": real_row, "entropy_rule_words": words,
          **compute_gap(diffusion, ladder, EQUAL_WORDS),
          "config": json.loads(config.to_json())}



def write(result: dict, out: pathlib.Path):
  """compute_gap.json, compute_gap.md (printed too) and compute_gap.png (with matplotlib) in `out`."""
  from cdm_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  out.mkdir(parents=True, exist_ok=True)
  (out / "compute_gap.json").write_text(evaluate.to_json(result))
  fmt = lambda v, f="{:.3g}": "-" if v is None else f.format(v)
  lines = ["| model | train steps | train GFLOP | judge ppl | unigram entropy | entropy at "
           f"{result['entropy_rule_words']} words | MAUVE | distinct-2 | mean words | empty |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for row in [result["diffusion"], *result["ar"], result["real"]]:
    lines.append(f"| {row['name']} | {row.get('steps', '-')} | {fmt(row.get('flops', 0) / 1e9, '{:.0f}')} "
                 f"| {fmt(row['judge_ppl'], '{:.1f}')} | {fmt(row['unigram_entropy'], '{:.3f}')} "
                 f"| {fmt(row.get(EQUAL_WORDS), '{:.3f}')} "
                 f"| {fmt(row['mauve'])} | {fmt(row['distinct_2'])} | {fmt(row['mean_length_words'], '{:.1f}')} "
                 f"| {row['empty_fraction']:.1%} |")
  verdict = "compute gap " + describe_gap(result)
  (out / "compute_gap.md").write_text("\n".join(lines) + f"\n\n{verdict}\n")
  print("\n".join(lines) + f"\n\n{verdict}")
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.loglog([r["flops"] for r in result["ar"]], [r["judge_ppl"] for r in result["ar"]], "o-",
            label="AR ladder")
  ax.loglog([result["diffusion"]["flops"]], [result["diffusion"]["judge_ppl"]], "s", label="diffusion")
  ax.axhline(result["real"]["judge_ppl"], color="gray", ls=":", label="real text")
  ax.set_xlabel("training FLOPs")
  ax.set_ylabel("judge perplexity of samples")
  ax.set_title(verdict, fontsize=8)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "compute_gap.png", dpi=120)


def _ar_row(name: str, ar_config, generator, data, corpus_id: str, judge, scorer, n: int,
            seed: int) -> dict:
  """The scored samples of one AR rung (trained on first use)."""
  # pylint: disable=g-import-not-at-top
  from cdm_jax.evaluation import ar_model as judge_lib, evaluate
  # A rung's row depends only on its model, the judge, the sample count and the seed: cached
  # beside the rung's model, so runs compared on one ladder score it once.
  start = time.perf_counter()
  ar = judge_lib.get_judge(generator.tokenizer, data.train, corpus_id, ar_config)
  cached = pathlib.Path(ar.info["cache"]) / (
      f"row_judge-{pathlib.Path(judge.info['cache']).name}_n{n}_seed{seed}.json")
  if cached.exists():
    row = json.loads(cached.read_text())
    if "texts" in row:  # rows cached before the texts were kept are scored again
      return {**row, "name": name}
  texts = generator.decode(ar.sample(n, seed))
  row = {"name": name, "steps": ar.info["steps"], "train_seconds": ar.info["train_seconds"],
         "wall_seconds": time.perf_counter() - start, **scorer.score(texts), "examples": texts[:5],
         "texts": texts}
  cached.write_text(evaluate.to_json(row))
  return row


def _diffusion_row(generator, data, scorer, args: GapSettings, n: int, overrides: dict,
                   diffusion_flops: float) -> dict:
  """The diffusion samples' scores; its budget counts a read-out decoder's and a latent model's
  autoencoder stage's training FLOPs."""
  # pylint: disable=g-import-not-at-top
  from cdm_jax.core import rounding
  from cdm_jax.data import encoding
  from cdm_jax.models import builders
  from cdm_jax.training import autoencoder as ae_stage
  config = generator.config
  decoder_flops = 0.0
  if generator.options(**overrides).decoder == rounding.CONTEXTUAL_DECODER:  # counts as training
    generator.make_sample_fn(**overrides)  # a clear error when the workdir has no such decoder
    decoder_flops = generator.readout_decoder.flops
  # A latent model's autoencoder stage trained for it: its FLOPs count in the diffusion budget.
  autoencoder_flops = (ae_stage.autoencoder_flops(config) if builders.is_latent(config) else 0.0)
  start = time.perf_counter()
  lengths = (encoding.draw_lengths(data.train, n, args.seed) if args.lengths == "data"
             else None)
  texts = generator.sample(n, seed=args.seed, lengths=lengths, **overrides)
  return {"name": "diffusion", "steps": generator.step,
               "flops": diffusion_flops + decoder_flops + autoencoder_flops,
               "readout_decoder_flops": decoder_flops, "autoencoder_flops": autoencoder_flops,
               "sampling_seconds": time.perf_counter() - start, **scorer.score(texts),
               "examples": texts[:5], "texts": texts}


def _ladder(base, args: GapSettings, steps_of, ar_step_flops: float, ar_row,
            diffusion_ppl: float) -> list[dict]:
  """The AR rungs' rows, smallest budget first; extended down (halving) while diffusion is behind
  the smallest and a rung keeps `args.min_steps` steps."""
  fractions = [Fraction(f) for f in args.fractions.split(",")]
  rows = {}
  pending = sorted(set(fractions))
  while pending:
    fraction = pending.pop(0)
    ar_config = dataclasses.replace(base, seed=args.ar_seed, max_steps=steps_of(fraction))
    row = ar_row(f"ar {fraction}", ar_config)
    row.update(fraction=str(fraction), flops=ar_config.max_steps * ar_step_flops)
    rows[fraction] = row
    print(f"{row['name']:>10s}: {row['steps']:6d} steps, judge ppl {row['judge_ppl']:.1f}, "
          f"entropy {row['unigram_entropy']:.3f}", flush=True)
    smallest = min(rows)
    behind = diffusion_ppl >= rows[smallest]["judge_ppl"]
    if not pending and behind and steps_of(smallest / 2) >= args.min_steps:
      pending.append(smallest / 2)  # extend the ladder down
  return [rows[f] for f in sorted(rows)]
