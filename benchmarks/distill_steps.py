"""Few-step generation: quality and time against sampling steps, teacher and distilled students.

  python benchmarks/distill_steps.py --workdir=workdirs/distill/mse1500 [--num_samples=200]
      [--steps=1,2,4,8,16 --judge_seed=7 --judge_steps=626 --out=benchmarks/results]
      [--students=8 --student_temperatures=1.0,1.05,1.1]
  python benchmarks/distill_steps.py --pool=DIR_SEED0,DIR_SEED1 --out=DIR   # pooled over seeds

Rows: the teacher as its config samples it (the reference: `sample.num_steps` steps of
`sample.sampler`, and once more with other noise), the teacher with DDIM at each of `--steps`,
and every student in `WORKDIR/students/` (or those in `--students`) at its own step count (the
last one also at each of `--steps` below it), at each logit temperature in
`--student_temperatures`. Each row: judge perplexity, word unigram entropy (nats), MAUVE against
real held-out text and against the reference's own samples, mean length, empty share, and the median
wall time to 64 samples (compiled, `--repeats` calls; run on an idle machine). The judge is the
cached one of `experiments/compute_gap.py` (`--judge_seed`, `--judge_steps`), trained on the
workdir's tokenizer if it is not cached. Writes distill_steps.{json,md,png} under `--out`.
"""

import argparse
import dataclasses
import json
import pathlib
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

import matplotlib  # pylint: disable=g-import-not-at-top

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import cdm_jax  # pylint: disable=g-import-not-at-top
from cdm_jax.sampling import artifacts
from cdm_jax.evaluation import evaluate
from cdm_jax.evaluation import ar_model as judge_lib
from cdm_jax.evaluation import text_metrics
from cdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top

REFERENCE_SECONDS_PER_STEP = 0.96  # the reference implementation's clamped step (issue 16)
REFERENCE_DEFAULT_STEPS = 2000


def _judge(generator, data, args):
  config = judge_lib.sized_like(generator.config.model, seed=args.judge_seed,
                                max_steps=args.judge_steps)
  return judge_lib.get_judge(generator.tokenizer, data.train,
                             judge_lib.gap_corpus_id(generator.config.data), config)


def _seconds_to_64(generator, options: dict, repeats: int) -> float:
  """Median wall time of `generator.sample(64)` once compiled."""
  generator.sample(64, seed=0, **options)
  times = []
  for i in range(repeats):
    start = time.perf_counter()
    generator.sample(64, seed=i + 1, **options)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _row(name, generator, options, scorers, args, seed=None) -> dict:
  seed = args.seed if seed is None else seed
  texts = generator.sample(args.num_samples, seed=seed, **options)
  real, reference = scorers
  scores = real.score(texts)
  row = {"model": name, **options, "seed": seed, "judge_ppl": scores["judge_ppl"],
         "unigram_entropy": scores["unigram_entropy"], "mauve_real": scores["mauve"],
         "mean_length_words": scores["mean_length_words"],
         "empty_fraction": scores["empty_fraction"],
         "seconds_to_64": _seconds_to_64(generator, options, args.repeats), "examples": texts[:5]}
  if reference is not None:
    row["mauve_teacher"] = reference.score(texts)["mauve"]
  print(f"{name:>12s} {options}: ppl {row['judge_ppl']:.1f}, entropy {row['unigram_entropy']:.3f}, "
        f"mauve real {row['mauve_real']}, teacher {row.get('mauve_teacher')}, "
        f"{row['seconds_to_64']:.2f} s / 64", flush=True)
  return row


def measure(args) -> dict:
  teacher = cdm_jax.load(args.workdir)
  data = pipeline.prepare_data(teacher.config.data, args.workdir)
  judge = _judge(teacher, data, args)
  n = min(args.num_samples, len(data.valid_text) // 2)
  args.num_samples = n
  references, _ = evaluate.shuffled_real_sets(data.valid_text, n, args.seed)
  index = text_metrics.TrainingSetIndex(data.train_text)
  make = lambda refs: evaluate.Scorer(judge, teacher.tokenizer, teacher.config.data.seq_len, refs,
                                      train_index=index, seed=args.seed)
  real = make(references)
  reference_row = _row("teacher", teacher, {}, (real, None), args)
  scorers = (real, make(teacher.sample(n, seed=args.seed)))
  # The same sampler with other noise: how close MAUVE against the reference samples can come.
  rows = [reference_row, _row("teacher", teacher, {}, scorers, args, seed=args.seed + 1000)]
  steps = [int(s) for s in args.steps.split(",")]
  for s in steps:
    rows.append(_row("teacher", teacher, {"steps": s, "sampler": "ddim", "clamp": "none"},
                     scorers, args))
  students = sorted(int(p.name.split("_")[1])
                    for p in (pathlib.Path(args.workdir) / artifacts.STUDENTS_DIR).glob("steps_*"))
  if args.students:
    wanted = {int(k) for k in args.students.split(",")}
    students = [k for k in students if k in wanted]
  temperatures = [float(t) for t in args.student_temperatures.split(",")]
  for k in students:
    student = cdm_jax.load(args.workdir, student=k)
    own = [k] if k != min(students) else sorted({k} | {s for s in steps if s < k})
    for s, t in ((s, t) for s in own for t in temperatures):
      options = {"steps": s} if t == 1.0 else {"steps": s, "temperature": t}
      rows.append(_row(f"student_{k}", student, options, scorers, args))
  metas = {k: artifacts.read_student(args.workdir, k) for k in students}
  return {"workdir": args.workdir, "teacher_step": teacher.step, "num_samples": n,
          "seed": args.seed, "judge": judge.info, "judge_ppl_real": real.reference_ppl,
          "reference_sampling": dataclasses.asdict(teacher.sample_config), "rows": rows,
          "students": metas,
          "reference_implementation_seconds": REFERENCE_SECONDS_PER_STEP * REFERENCE_DEFAULT_STEPS}


def _markdown(result: dict) -> str:
  ref = result["rows"][0]
  lines = [f"Teacher {result['workdir']} (step {result['teacher_step']}), {result['num_samples']} "
           f"samples per row, seed {result['seed']}; judge perplexity of real text "
           f"{result['judge_ppl_real']:.1f}. Reference row: the teacher as configured "
           f"({result['reference_sampling']['sampler']}, {result['reference_sampling']['num_steps']}"
           f" steps). The reference implementation's 2,000-step default at 0.96 s per step: "
           f"{result['reference_implementation_seconds']:.0f} s.", "",
           "| model | steps | judge ppl | vs reference | unigram entropy | MAUVE real | MAUVE vs "
           "reference samples | words | empty | s to 64 samples | sooner than the reference impl. |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  fmt = lambda v, f="{:.3f}": "-" if v is None else f.format(v)
  for r in result["rows"]:
    steps = r.get("steps", f"{result['reference_sampling']['num_steps']} (seed {r['seed']})")
    if "temperature" in r:
      steps = f"{steps}, T {r['temperature']:g}"
    lines.append(
        f"| {r['model']} | {steps} | {r['judge_ppl']:.1f} | {r['judge_ppl'] / ref['judge_ppl']:.2f}x"
        f" | {r['unigram_entropy']:.3f} | {fmt(r['mauve_real'])} | {fmt(r.get('mauve_teacher'))} "
        f"| {r['mean_length_words']:.1f} | {r['empty_fraction']:.1%} | {r['seconds_to_64']:.2f} | "
        f"{result['reference_implementation_seconds'] / r['seconds_to_64']:.0f}x |")
  for k, meta in sorted(result["students"].items(), key=lambda kv: int(kv[0])):
    lines.append(f"\nStudent {k}: {meta['distill_steps']} distillation steps, "
                 f"{meta['distill_flops'] / 1e12:.1f} TFLOP = "
                 f"{meta['flops_fraction_of_teacher_training']:.1%} of the teacher's training.")
  return "\n".join(lines) + "\n"


def _plot(result: dict, path: pathlib.Path):
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  stepped = [r for r in result["rows"] if "steps" in r]
  label = lambda r: r["model"] + (f" T {r['temperature']:g}" if "temperature" in r else "")
  for name in sorted({label(r) for r in stepped}):
    cells = [r for r in stepped if label(r) == name]
    for ax, key in zip(axes, ("judge_ppl", "mauve_teacher")):
      ax.plot([r["steps"] for r in cells], [r.get(key) or 0 for r in cells], marker="o", label=name)
  axes[0].axhline(result["rows"][0]["judge_ppl"], color="gray", ls=":", label="reference")
  for ax, title in zip(axes, ("judge perplexity", "MAUVE against the reference's samples")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampling steps")
    ax.set_title(title, fontsize=10)
  axes[0].set_yscale("log")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def pooled(results: list[dict]) -> str:
  """Markdown of several seeds' results (`--pool`): per sampler, the mean judge perplexity and
  unigram entropy over every seed's rows, the reference being all of the teacher's configured rows
  (each seed's and its other-noise one), and the MAUVE against the reference's samples per seed."""
  cells = {}
  for result in results:
    for r in result["rows"]:
      key = (("reference",) if "steps" not in r else
             (r["model"], r["steps"], r.get("temperature", 1.0)))
      cells.setdefault(key, []).append(r)
  ref = cells.pop(("reference",))
  mean = lambda rows, k: float(np.mean([r[k] for r in rows]))
  ref_ppl, ref_entropy = mean(ref, "judge_ppl"), mean(ref, "unigram_entropy")
  lines = [f"Seeds {[r['seed'] for r in results]}; reference: {len(ref)} runs of the teacher as "
           f"configured, judge ppl {ref_ppl:.1f}, entropy {ref_entropy:.3f}.", "",
           "| model | steps | T | runs | judge ppl | vs reference | entropy | vs reference | "
           "MAUVE vs reference samples (per run) | s to 64 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for (model, steps, temperature), rows in sorted(cells.items(), key=str):
    ppl, entropy = mean(rows, "judge_ppl"), mean(rows, "unigram_entropy")
    mauve = " / ".join(f"{r['mauve_teacher']:.3f}" for r in rows if r.get("mauve_teacher"))
    lines.append(f"| {model} | {steps} | {temperature:g} | {len(rows)} | {ppl:.1f} | "
                 f"{ppl / ref_ppl:.2f}x | {entropy:.3f} | {entropy - ref_entropy:+.3f} | {mauve} | "
                 f"{mean(rows, 'seconds_to_64'):.2f} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", help="The teacher workdir (required unless --pool).")
  parser.add_argument("--num_samples", type=int, default=200)
  parser.add_argument("--steps", default="1,2,4,8,16")
  parser.add_argument("--students", default="",
                      help="Comma-separated student step counts to score (default: every student).")
  parser.add_argument("--student_temperatures", default="1.0",
                      help="Logit temperatures to sample each student at (models predicting "
                           "logits; > 1 flattens x0_hat's softmax: more entropy).")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--judge_seed", type=int, default=judge_lib.GAP_JUDGE_SEED)
  parser.add_argument("--judge_steps", type=int, default=626)
  parser.add_argument("--out", default=str(ROOT / "benchmarks/results"))
  parser.add_argument("--pool", default="",
                      help="Comma-separated result folders of earlier runs (other --seed): "
                           "their pooled table to OUT/distill_steps_pooled.md, nothing measured.")
  args = parser.parse_args()
  if args.pool:
    table = pooled([json.loads((pathlib.Path(d) / "distill_steps.json").read_text())
                    for d in args.pool.split(",")])
    pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(args.out) / "distill_steps_pooled.md").write_text(table)
    print(table)
    return
  if not args.workdir:
    parser.error("--workdir is required (unless --pool)")
  result = measure(args)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "distill_steps.json").write_text(json.dumps(result, indent=2))
  (out / "distill_steps.md").write_text(_markdown(result))
  _plot(result, out / "distill_steps.png")
  print(_markdown(result))


if __name__ == "__main__":
  main()
