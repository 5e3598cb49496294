"""Start-up, memory and loader throughput against corpus size, for prepared corpora (`cdm-prepare`).

    python benchmarks/prepared_corpus.py [--tokens=1e6,1e7,1e8] [--steps=5] [--dir=/tmp/cdm_prep]
        [--in_memory_up_to=1e7]

For each size, a synthetic corpus (lines of 4-16 words drawn from 3,000 made-up words, vocabulary 1000
pieces; lines longer than a row are split into several rows, so every token is kept) is written,
prepared once (wall time; the table gives the tokens stored for training), and a `cdm-train` subprocess
trains the wordnet config's model from the prepared folder for `--steps` steps: its peak RSS
(`wait4`) and its time to the first finished step (from the process start to the first metrics
line) are printed. Up to `--in_memory_up_to` tokens the same corpus is also trained from the text
file (the in-memory path) for comparison. Then the loader alone: tokens/s of
`BatchIterator` over the largest prepared train split (64 x 32 rows, windowed shuffle), against the
training step's consumption measured in the same run (batch x seq_len / seconds per step).

    python benchmarks/prepared_corpus.py --feed --compile_report=REPORT.json [--tokens=1e7]

measures instead one host's share of a pod config's batches (`--feed_config`, default
configs/owt_1b.py: its seq_len, batch and packing) against the tokens per second per host that
`cdm-compile --output=REPORT.json` projects for it (the train step's roofline).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
STDERR = pathlib.Path(tempfile.gettempdir()) / "cdm_jax_prepared_corpus_stderr.log"


def write_corpus(path: pathlib.Path, tokens: int, seed: int = 0):
  """About `tokens` words (+2 per line for BOS/EOS): the nominal size (the tokenizer cuts the
  made-up words into several pieces). Written in chunks so memory stays small."""
  rng = np.random.default_rng(seed)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  vocab = np.array(["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(3000)])
  weights = 1.0 / np.arange(1, len(vocab) + 1)  # Zipf-like word frequencies
  weights /= weights.sum()
  written = 0
  with open(path, "w", encoding="utf-8") as f:
    while written < tokens:
      lengths = rng.integers(4, 17, 20_000)
      words = vocab[rng.choice(len(vocab), int(lengths.sum()), p=weights)]
      cuts = np.cumsum(lengths)[:-1]
      f.write("\n".join(" ".join(line) for line in np.split(words, cuts)) + "\n")
      written += int(lengths.sum()) + 2 * len(lengths)


def run_measured(argv: list[str], metrics: pathlib.Path | None = None) -> dict:
  """Runs argv; its peak RSS and wall time, and when `metrics` names a metrics.jsonl, the time
  from the start to the first line written there."""
  start = time.perf_counter()
  with open(STDERR, "wb") as stderr:
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    first_step = None
    while True:
      pid, status, usage = os.wait4(process.pid, os.WNOHANG)
      if pid:
        break
      if metrics is not None and first_step is None and metrics.exists() and \
          metrics.stat().st_size:
        first_step = time.perf_counter() - start
      time.sleep(0.05)
  wall = time.perf_counter() - start
  process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode:
    raise RuntimeError(f"{argv} failed: {STDERR.read_text()[-2000:]}")
  return {"wall_s": wall, "first_step_s": first_step, "peak_rss_mib": usage.ru_maxrss / 1024}


def train_argv(workdir: pathlib.Path, steps: int, **data) -> list[str]:
  flags = [f"--config.data.{k}={v}" for k, v in data.items()]
  return [sys.executable, "-m", "cdm_jax.cli.train", "--config=configs/wordnet.py",
          f"--workdir={workdir}", f"--config.train.num_train_steps={steps}",
          "--config.train.log_every_steps=1", "--config.train.eval_every_steps=0",
          "--config.train.sample_every_steps=0", f"--config.train.checkpoint_every_steps={steps}",
          "--config.train.warmup_steps=1", "--config.data.vocab_size=1000",
          "--config.data.long_lines=split", *flags]


def loader_throughput(folder: pathlib.Path, batches: int = 300) -> float:
  from cdm_jax.data import batching, shards  # pylint: disable=g-import-not-at-top
  split = shards.PreparedSplit(str(folder), shards.read_manifest(str(folder)), "train")
  iterator = batching.BatchIterator(split, 64, seed=0, shuffle_window=1 << 18)
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * 64 * split.seq_len / (time.perf_counter() - start)


def host_feed(folder: pathlib.Path, *, global_batch: int, hosts: int, packing: bool,
              batches: int = 200) -> float:
  """Tokens/s one host's loader delivers: its 1/`hosts` share of each global batch of the
  prepared train split (windowed shuffle, packed rows when `packing`), content checks on first
  read included (the first batch is untimed)."""
  from cdm_jax.data import batching, shards  # pylint: disable=g-import-not-at-top
  split = shards.PreparedSplit(str(folder), shards.read_manifest(str(folder)), "train", packing)
  iterator = batching.BatchIterator(split, global_batch, seed=0, process_index=0,
                                    process_count=hosts, shuffle_window=1 << 20)
  next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * (global_batch // hosts) * split.seq_len / (time.perf_counter() - start)


def feed_against_projection(args):
  """--feed: prepare a corpus at the pod config's seq_len (long lines split, as the config does)
  and compare one host's loader with the tokens per second per host that `cdm-compile`'s roofline
  projects for the config (its --output JSON: train step tokens/s/chip x chips per host)."""
  from cdm_jax.runtime import config_files  # pylint: disable=g-import-not-at-top
  config = config_files.load(ROOT / args.feed_config)
  report = json.loads(pathlib.Path(args.compile_report).read_text())
  train = next(f for f in report["functions"] if f["function"] == "train_step")
  hosts = max(1, report["chips"] // args.chips_per_host)
  projected = train["tokens_per_second_per_chip"] * args.chips_per_host
  base = pathlib.Path(args.dir)
  base.mkdir(parents=True, exist_ok=True)
  corpus, folder = base / "feed_corpus.txt", base / f"feed_prepared_{config.data.seq_len}"
  if not corpus.exists():
    write_corpus(corpus, int(float(args.tokens.split(",")[-1])))
  if not (folder / "manifest.json").exists():
    run_measured([sys.executable, "-m", "cdm_jax.cli.prepare", "--config=configs/wordnet.py",
                  f"--output={folder}", "--config.data.corpus=text",
                  f"--config.data.path={corpus}", "--config.data.vocab_size=1000",
                  "--config.data.long_lines=split", f"--config.data.seq_len={config.data.seq_len}"])
  fed = host_feed(folder, global_batch=config.train.batch_size, hosts=hosts,
                  packing=config.data.packing)
  print(f"feed: {fed:,.0f} tokens/s for one host's share ({config.train.batch_size} x "
        f"{config.data.seq_len} rows over {hosts} hosts, packing={config.data.packing}); the "
        f"roofline of {args.feed_config} on {report['slice']} consumes {projected:,.0f} tokens/s "
        f"per host ({args.chips_per_host} chips x {train['tokens_per_second_per_chip']:,.0f}): "
        f"{fed / projected:.1f}x")


def step_consumption(workdir: pathlib.Path) -> float:
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  seconds = np.median([l["seconds_per_step"] for l in lines if "seconds_per_step" in l][1:])
  return 64 * 32 / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", default="1e6,1e7,1e8")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--dir", default="/tmp/cdm_prep")
  parser.add_argument("--in_memory_up_to", type=float, default=1e7)
  parser.add_argument("--feed", action="store_true", help="only the host feed against a pod "
                      "config's projected consumption (--compile_report); --tokens: corpus size")
  parser.add_argument("--feed_config", default="configs/owt_1b.py")
  parser.add_argument("--compile_report", default="", help="cdm-compile --output JSON of it")
  parser.add_argument("--chips_per_host", type=int, default=4)
  args = parser.parse_args()
  if args.feed:
    feed_against_projection(args)
    return
  base = pathlib.Path(args.dir)
  base.mkdir(parents=True, exist_ok=True)
  print("| corpus size | train tokens stored | path | prepare (s) | train RSS peak (MiB) | "
        "time to 1st step (s) |")
  print("|---|---|---|---|---|---|")
  workdir = None
  for size in (float(s) for s in args.tokens.split(",")):
    tag = f"{size:.0e}".replace("+0", "")
    corpus = base / f"corpus_{tag}.txt"
    if not corpus.exists():
      write_corpus(corpus, int(size))
    folder = base / f"prepared_{tag}"
    prepared = run_measured([sys.executable, "-m", "cdm_jax.cli.prepare",
                             "--config=configs/wordnet.py", f"--output={folder}",
                             "--config.data.corpus=text", f"--config.data.path={corpus}",
                             "--config.data.vocab_size=1000", "--config.data.long_lines=split"])
    stored = json.loads((folder / "manifest.json").read_text())["splits"]["train"]["tokens"]
    runs = [("prepared", dict(prepared=folder, corpus="text", path=corpus))]
    if size <= args.in_memory_up_to:
      runs.append(("in memory", dict(corpus="text", path=corpus)))
    for name, data in runs:
      workdir = base / f"run_{tag}_{name.replace(' ', '_')}"
      subprocess.run(["rm", "-rf", str(workdir)], check=True)
      got = run_measured(train_argv(workdir, args.steps, **data), workdir / "metrics.jsonl")
      seconds = f"{prepared['wall_s']:.0f}" if name == "prepared" else "-"
      print(f"| {size:.0e} | {stored:,} | {name} | {seconds} | {got['peak_rss_mib']:.0f} | "
            f"{got['first_step_s']:.1f} |", flush=True)
      if name == "prepared":
        prepared_workdir, prepared_folder = workdir, folder
  loader = loader_throughput(prepared_folder)
  consumed = step_consumption(prepared_workdir)
  print(f"\nloader: {loader:,.0f} tokens/s over {prepared_folder.name} (64 x 32, windowed shuffle); "
        f"training consumes {consumed:,.0f} tokens/s (wordnet config, this CPU): "
        f"{loader / consumed:.0f}x")
  del workdir


if __name__ == "__main__":
  main()
