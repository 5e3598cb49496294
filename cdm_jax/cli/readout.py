"""`cdm-readout --workdir=DIR`: trains the contextual read-out decoder of a trained workdir."""

from cdm_jax.cli import common
from cdm_jax.models.contextual_decoder import ReadoutConfig
from cdm_jax.posttrain import readout


def main(argv=None):
  helps = {"num_layers": "Transformer blocks of the decoder.",
           "max_t": "Training noise: t ~ U[0, max_t] on the diffusion's schedule.",
           "steps": "Optimizer steps.", "batch_size": "Sequences per step.",
           "learning_rate": "AdamW's peak learning rate (cosine decay to 10%).",
           "warmup_steps": "Linear warm-up steps.", "seed": "Initialisation, noise and data order."}
  common.run_workdir_job(ReadoutConfig, helps, readout.train, argv,
                         workdir_help="A trained workdir.")



if __name__ == "__main__":
  main()
