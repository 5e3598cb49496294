"""One table from the compute_gap.json files of a quality A/B: python experiments/quality/summarize.py ROOT"""

import json
import pathlib
import runpy
import sys

_GAP = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "compute_gap.py"))
compute_gap, describe_gap = _GAP["compute_gap"], _GAP["describe_gap"]


def main(root: str):
  lines = ["| run | diffusion judge ppl | unigram entropy | empty | mean words | MAUVE | AR ppl at 1x "
           "| compute gap |", "|---|---|---|---|---|---|---|---|"]
  for path in sorted(pathlib.Path(root).glob("*/compute_gap/compute_gap.json")):
    r = json.loads(path.read_text())
    d = r["diffusion"]
    gap = describe_gap(compute_gap(d, r["ar"]))  # recomputed: the current rule on stored rows
    mauve = "-" if d["mauve"] is None else f"{d['mauve']:.3f}"
    lines.append(f"| {path.parts[-3]} | {d['judge_ppl']:.1f} | {d['unigram_entropy']:.3f} "
                 f"| {d['empty_fraction']:.1%} | {d['mean_length_words']:.1f} | {mauve} "
                 f"| {r['ar'][-1]['judge_ppl']:.1f} | {gap} |")
  print("\n".join(lines))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "workdirs/quality")
