"""Sampling options of a seq2seq model (e.g. the reverse dictionary) side by side, one model load.

python experiments/reverse_dictionary.py --workdir=DIR [--start=1000 --num_examples=200
    --candidates=10 --draws=10 --seed=0] --setting "guidance_scale=2,logit_temperature=0.5" ...
    [--ar_temperature=1.0 ...]

For each --setting (comma-separated sampling fields; "" = the config's options) the diffusion model
draws --draws targets per held-out source (`tasks.held_out_pairs`: the fixed shuffle, from
--start), ranks them by vote and scores accuracy@1 / @k like `cdm-evaluate
--task=seq2seq`; each --ar_temperature does the same for the FLOP-matched AR prefix LM (cached
after its first training). Beside the accuracies, two graded figures that move before accuracy
does: `known_target_rate`, the share of draws that are some training pair's target (a real lemma,
for the reverse dictionary), and `distinct_per_source`. Prints one JSON line per row.

Tune on one range of held-out pairs (e.g. --start=1000) and report on another (--start=0).
"""

import argparse
import json
import time

import numpy as np


def _row(name: str, drawn: list[list[str]], pairs: dict, args, known_targets: set) -> dict:
  from cdm_jax.evaluation import tasks  # pylint: disable=g-import-not-at-top
  ranked = [tasks.rank_by_votes(group, args.candidates) for group in drawn]
  scores = tasks.seq2seq_scores(ranked, pairs["references"], args.candidates)
  flat = [" ".join(text.lower().split()) for group in drawn for text in group]
  return {"row": name, **{k: v for k, v in scores.items() if k != "bleu_signature"},
          "draws": args.draws, "start": args.start,
          "known_target_rate": float(np.mean([text in known_targets for text in flat])),
          "distinct_per_source": float(np.mean([len(set(group)) for group in drawn]))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--start", type=int, default=1000)
  parser.add_argument("--num_examples", type=int, default=200)
  parser.add_argument("--candidates", type=int, default=10)
  parser.add_argument("--draws", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--setting", action="append", default=[],
                      help='sampling fields for one diffusion row, e.g. "guidance_scale=2"')
  parser.add_argument("--ar_temperature", type=float, action="append", default=[])
  args = parser.parse_args()
  from cdm_jax.runtime import overrides as overrides_lib  # pylint: disable=g-import-not-at-top
  from cdm_jax import sampling  # pylint: disable=g-import-not-at-top
  from cdm_jax.evaluation import tasks
  from cdm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  generator = sampling.load(args.workdir)
  data = pipeline.prepare_data(generator.config.data, args.workdir)
  pairs = tasks.held_out_pairs(generator, data, args.start, args.num_examples)
  known_targets = {" ".join(target.lower().split()) for _, target in data.train_text}
  layouts = list(zip(pairs["prompts"], pairs["known"]))
  for setting in args.setting:
    fields = [part for part in setting.split(",") if part]
    overrides = overrides_lib.dataclass_overrides(generator.sample_config, fields)
    t0 = time.perf_counter()
    drawn = generator.candidates(layouts, args.draws, seed=args.seed, target_only=True,
                                 **overrides)
    row = _row(f"diffusion {setting}", drawn, pairs, args, known_targets)
    print(json.dumps({**row, "seconds": time.perf_counter() - t0}), flush=True)
  if args.ar_temperature:
    ar = tasks.ar_baseline(generator, data)
    for temperature in args.ar_temperature:
      drawn = tasks.ar_draws(ar, generator, pairs["prompts"], args.draws, seed=args.seed,
                             temperature=temperature)
      print(json.dumps(_row(f"ar temperature={temperature}", drawn, pairs, args, known_targets)),
            flush=True)


if __name__ == "__main__":
  main()
