"""One table from the compute_gap.json files of a quality A/B: python experiments/quality/summarize.py ROOT

Rows: ROOT/RUN/compute_gap*/compute_gap.json (a suffix names a sampling variant scored with
`compute_gap.py --set ... --out=RUN/compute_gap_SUFFIX`); the context column is the largest
own-minus-foreign read-out accuracy (points) in RUN/context_use.txt, when present."""

import json
import pathlib
import sys

from cdm_jax.evaluation.compute_gap import compute_gap, describe_gap


def context_gain(run: pathlib.Path) -> str:
  """Largest own-minus-foreign context accuracy over t, in points, from context_use.txt."""
  path = run / "context_use.txt"
  if not path.is_file():
    return "-"
  lines = [l for l in path.read_text().splitlines() if l.startswith("{")]
  if not lines:  # still being written
    return "-"
  rows = json.loads(lines[-1])["rows"]
  best = max(rows, key=lambda r: r["accuracy_own_context"] - r["accuracy_foreign_context"])
  gain = 100 * (best["accuracy_own_context"] - best["accuracy_foreign_context"])
  return f"{gain:.1f} (t={best['t']})"


def main(root: str):
  lines = ["| run | diffusion judge ppl | unigram entropy | empty | mean words | MAUVE | AR ppl at 1x "
           "| compute gap | context gain |", "|---|---|---|---|---|---|---|---|---|"]
  for path in sorted(pathlib.Path(root).glob("*/compute_gap*/compute_gap.json")):
    r = json.loads(path.read_text())
    variant = path.parts[-2].removeprefix("compute_gap").lstrip("_")
    name = path.parts[-3] + (f" + {variant}" if variant else "")
    d = r["diffusion"]
    gap = describe_gap(compute_gap(d, r["ar"]))  # recomputed: the current rule on stored rows
    mauve = "-" if d["mauve"] is None else f"{d['mauve']:.3f}"
    context = "-" if variant else context_gain(path.parents[1])
    lines.append(f"| {name} | {d['judge_ppl']:.1f} | {d['unigram_entropy']:.3f} "
                 f"| {d['empty_fraction']:.1%} | {d['mean_length_words']:.1f} | {mauve} "
                 f"| {r['ar'][-1]['judge_ppl']:.1f} | {gap} | {context} |")
  print("\n".join(lines))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "workdirs/quality")
