"""`cdm-evaluate --workdir=DIR [--num_samples=1000 --task=lm|seq2seq|infill ...]`: the offline
evaluation of a trained workdir, printed as one JSON object and then saved under DIR/eval/ (also
`python -m cdm_jax.cli.evaluate`)."""

import logging

from cdm_jax.cli import common
from cdm_jax.evaluation import ar_model, evaluate
from cdm_jax.runtime import distributed


def _print_then_save(workdir: str, result: dict):
  """Prints the result first, so that a workdir that cannot be written loses nothing."""
  if not distributed.is_primary():
    return
  print(evaluate.to_json(result), flush=True)
  try:
    evaluate.save_result(workdir, result)
  except OSError as err:
    raise common.RunError(
        f"the result above could not be saved under {workdir}/eval/ ({err}).") from err


def main(argv=None):
  from absl import flags, logging as absl_logging  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "A trained workdir.", required=True)
  common.define_sampling_flags(flags, num_samples=1000)  # per set: diffusion, AR baseline, real
  flags.DEFINE_float("judge_minutes", ar_model.JudgeConfig.time_limit_minutes,
                     "Training budget of the judge when it is not cached yet.")
  flags.DEFINE_integer("judge_steps", 0, "> 0: train the judge for exactly this many steps instead "
                       "(the same judge however busy the machine is).")
  flags.DEFINE_float("ar_temperature", 1.0, "Temperature of the AR baseline's samples (both "
                     "tasks: lm and seq2seq).")
  flags.DEFINE_float("ar_top_p", 1.0, "Nucleus mass of the AR baseline's samples.")
  flags.DEFINE_enum("task", "lm", ["lm", "seq2seq", "infill", "continuation"],
                    "lm: unconditional samples; seq2seq / infill / continuation: conditional tasks "
                    "on held-out data (cdm_jax/evaluation/tasks.py).")
  flags.DEFINE_integer("num_examples", 200, "Held-out examples of --task=seq2seq/infill/"
                       "continuation.")
  flags.DEFINE_integer("candidates", 10, "k of accuracy@k (--task=seq2seq): the length of each "
                       "model's ranked list of targets per source.")
  flags.DEFINE_integer("draws", 0, "Targets drawn per source (--task=seq2seq; 0: --candidates); "
                       "the --candidates most frequent distinct ones are the ranked list.")
  flags.DEFINE_integer("start", 0, "First held-out example of --task=seq2seq (e.g. tune sampling "
                       "options on one range, report on another).")
  flags.DEFINE_bool("baseline", True, "Also score the FLOP-matched AR prefix LM on the task.")

  def run(unused_argv):
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("cdm_jax").setLevel(logging.INFO)
    f = flags.FLAGS
    overrides = common.sampling_overrides(f)
    if f.task != "lm":
      _print_then_save(f.workdir, evaluate.evaluate_task(
          f.workdir, f.task, num_examples=f.num_examples, seed=f.seed, candidates=f.candidates,
          draws=f.draws, start=f.start, baseline=f.baseline, ar_temperature=f.ar_temperature,
          sample_overrides=overrides, write=False, judge_steps=f.judge_steps))
      return
    if f.guidance_scale:
      raise ValueError("--guidance_scale needs a condition: use it with --task=seq2seq or infill.")
    result = evaluate.evaluate(f.workdir, num_samples=f.num_samples, seed=f.seed,
                      sample_overrides=overrides,
                      judge_config=ar_model.judge_budget(f.judge_minutes, f.judge_steps),
                      ar_temperature=f.ar_temperature, ar_top_p=f.ar_top_p, write=False)
    _print_then_save(f.workdir, result)

  common.run_main(run, argv)



if __name__ == "__main__":
  main()
