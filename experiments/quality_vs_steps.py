"""Headline quality against sampling steps for every sampler, with and without clamping.

  python experiments/quality_vs_steps.py --workdir=workdirs/wordnet [--num_samples=200]
      [--steps=10,25,50,100,200 --samplers=ddpm,ddim,euler,heun --clamps=none,soft]

Writes experiments/results/quality_vs_steps.{md,json,png}. The judge is the cached one that
`cdm-evaluate` trained for this corpus + tokenizer.
"""

import argparse
import json
import pathlib
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

import matplotlib  # pylint: disable=g-import-not-at-top

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from cdm_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
from cdm_jax.evaluation import ar_model as judge_lib
from cdm_jax.evaluation import text_metrics


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num_samples", type=int, default=200)
  parser.add_argument("--steps", default="10,25,50,100,200")
  parser.add_argument("--samplers", default="ddpm,ddim,euler,heun")
  parser.add_argument("--clamps", default="none,soft")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--judge_minutes", type=float, default=judge_lib.JudgeConfig.time_limit_minutes)
  parser.add_argument("--judge_steps", type=int, default=0, help="> 0: a step-budgeted judge instead")
  parser.add_argument("--out", default=str(ROOT / "experiments/results"))
  args = parser.parse_args()

  generator, data, judge = evaluate.load_for_evaluation(
      args.workdir, judge_lib.judge_budget(args.judge_minutes, args.judge_steps))
  config = generator.config
  n = min(args.num_samples, len(data.valid_text))
  references, _ = evaluate.shuffled_real_sets(data.valid_text, n, args.seed)
  scorer = evaluate.Scorer(judge, generator.tokenizer, config.data.seq_len, references,
                           train_index=text_metrics.TrainingSetIndex(data.train_text), seed=args.seed)
  rows = []
  for sampler in args.samplers.split(","):
    for clamp in args.clamps.split(","):
      for steps in map(int, args.steps.split(",")):
        start = time.perf_counter()
        texts = generator.sample(n, seed=args.seed, steps=steps, sampler=sampler, clamp=clamp)
        seconds = time.perf_counter() - start
        scores = scorer.score(texts)
        rows.append({"sampler": sampler, "clamp": clamp, "steps": steps, "seconds": seconds, **scores})
        print(f"{sampler:5s} {clamp:4s} {steps:4d}: ratio {scores['judge_ppl_ratio']:.2f}, "
              f"mauve {scores['mauve']}, len {scores['mean_length_words']:.1f}, "
              f"empty {scores['empty_fraction']:.2%}, {seconds:.0f}s", flush=True)

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  meta = {"workdir": args.workdir, "checkpoint_step": generator.step, "num_samples": n,
          "seed": args.seed, "judge_ppl_real": scorer.reference_ppl, "judge": judge.info}
  (out / "quality_vs_steps.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
  fmt = lambda v: "-" if v is None else f"{v:.3g}"
  lines = [f"Corpus {config.data.corpus}, checkpoint step {generator.step}, {n} samples per cell, "
           f"seed {args.seed}; judge perplexity of real held-out text {scorer.reference_ppl:.1f}.", "",
           "| sampler | clamp | steps | judge ppl ratio | MAUVE | mean words | empty | distinct-2 | seconds |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['sampler']} | {r['clamp']} | {r['steps']} | {fmt(r['judge_ppl_ratio'])} | "
                 f"{fmt(r['mauve'])} | {r['mean_length_words']:.1f} | {r['empty_fraction']:.1%} | "
                 f"{r['distinct_2']:.2f} | {r['seconds']:.0f} |")
  (out / "quality_vs_steps.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for sampler in args.samplers.split(","):
    for clamp in args.clamps.split(","):
      cells = [r for r in rows if r["sampler"] == sampler and r["clamp"] == clamp]
      label = f"{sampler}/{clamp}"
      axes[0].plot([r["steps"] for r in cells], [r["judge_ppl_ratio"] for r in cells], marker="o", label=label)
      axes[1].plot([r["steps"] for r in cells], [r["mauve"] or 0 for r in cells], marker="o", label=label)
  for ax, title in zip(axes, ["judge perplexity ratio (1 = real text)", "MAUVE (1 = real text)"]):
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_title(title, fontsize=10)
  axes[0].set_yscale("log")
  axes[1].legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(out / "quality_vs_steps.png", dpi=110)


if __name__ == "__main__":
  main()
