"""Plots the embedding statistics of the seed-claim variants against training step.

  python experiments/seed_claims/plot.py workdirs/seed_claims [--out experiments/seed_claims/results]
Writes embedding_stats.png and summary.md (first/last values, last/first ratios).
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

VARIANTS = ["mse_alone", "mse_rounding", "mse_anchor", "ce_unnormalized", "ce_normalized"]
PANELS = [("embed_mean_norm", "mean embedding norm"),
          ("embed_mean_pairwise_distance", "mean pairwise distance"),
          ("embed_distance_to_noise", "distance / noise scale at t={t}"),
          ("embed_decode_acc_noisy", "NN decode accuracy, noised (t={t})")]


def stats_t(workdir: pathlib.Path) -> float:
  """The noise level of the noisy statistics, from the run's resolved config."""
  path = workdir / "config.json"
  if path.is_file():
    return json.loads(path.read_text()).get("train", {}).get("embedding_stats_t", 0.1)
  return 0.1  # runs from before the field existed


def load(workdir: pathlib.Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return []
  return [r for r in map(json.loads, path.read_text().splitlines()) if "embed_mean_norm" in r]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("root")
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  runs = {name: load(pathlib.Path(args.root) / name) for name in VARIANTS}
  t = stats_t(pathlib.Path(args.root) / VARIANTS[0])
  fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
  for ax, (key, title) in zip(axes, PANELS):
    title = title.format(t=t)
    for name, rows in runs.items():
      if rows:
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=name)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    if key != "embed_decode_acc_noisy":
      ax.set_yscale("log")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "embedding_stats.png", dpi=110)
  lines = ["| variant | steps | norm first -> last | pairwise dist first -> last (ratio) | "
           f"dist/noise (t={t}) last | NN acc noisy (t={t}) first -> last | diffusion loss last |",
           "|---|---|---|---|---|---|---|"]
  for name, rows in runs.items():
    if not rows:
      continue
    a, b = rows[0], rows[-1]
    lines.append(
        f"| {name} | {b['step']} | {a['embed_mean_norm']:.2f} -> {b['embed_mean_norm']:.2f} | "
        f"{a['embed_mean_pairwise_distance']:.2f} -> {b['embed_mean_pairwise_distance']:.2f} "
        f"({b['embed_mean_pairwise_distance'] / a['embed_mean_pairwise_distance']:.2f}x) | "
        f"{b['embed_distance_to_noise']:.2f} | {a['embed_decode_acc_noisy']:.3f} -> "
        f"{b['embed_decode_acc_noisy']:.3f} | {b['diffusion_loss']:.4f} |")
  (out / "summary.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
