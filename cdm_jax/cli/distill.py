"""`cdm-distill --workdir=DIR [--target_steps=1 ...]`: progressive distillation of a trained
workdir into few-step students (also `python -m cdm_jax.cli.distill`)."""

from cdm_jax.cli import common
from cdm_jax.posttrain import distill


def main(argv=None):
  helps = {"target_steps": "Sampling steps of the last student.",
           "teacher_steps": "DDIM steps of the first round's teacher: target_steps x 2^rounds.",
           "steps_per_round": "Optimizer steps per halving.",
           "learning_rate": "Adam's learning rate (decayed linearly to 0 within each round).",
           "runs_per_step": "Teacher runs from noise per step (N + 1 training points each).",
           "checkpoint_every_steps": "Checkpoint interval (and at every round's end).",
           "log_every_steps": "Metrics interval (WORKDIR/distill/metrics.jsonl).",
           "seed": "Noise, condition masks and corpus order."}
  common.run_workdir_job(distill.DistillConfig, helps, distill.distill, argv,
                      workdir_help="A trained workdir (the teacher).")



if __name__ == "__main__":
  main()
