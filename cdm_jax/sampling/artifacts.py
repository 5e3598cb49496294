"""What training and post-training write beside a model, read back for sampling: a latent model's
autoencoder (`WORKDIR/autoencoder/final/`, its frozen encoder and decoder), the few-step students
of `cdm_jax.posttrain.distill` (`WORKDIR/students/steps_N/`) and the contextual read-out decoder of
`cdm_jax.posttrain.readout` (`WORKDIR/readout_decoder/`). This module owns these formats, so
sampling needs no training or post-training module."""

import dataclasses
import json

import jax
import jax.numpy as jnp

from cdm_jax.models import builders
from cdm_jax.models.autoencoder import TextAutoencoder
from cdm_jax.models.config import ModelConfig
from cdm_jax.models.contextual_decoder import ContextualDecoder, ReadoutConfig, decoder_model_config
from cdm_jax.runtime import checkpointing, fs, parallel

AUTOENCODER_DIR = "autoencoder"
FINAL_DIR = "final"
DECODER_DIR = "readout_decoder"
STUDENTS_DIR = "students"


def autoencoder_final(workdir):
  """The folder of a latent workdir's finished autoencoder: `params/` and its report."""
  return fs.path(workdir) / AUTOENCODER_DIR / FINAL_DIR


def load_autoencoder(config, workdir: str, mesh) -> dict:
  """The finished autoencoder's variables ({"params": ...}, standardization statistics included),
  replicated over `mesh`."""
  model = TextAutoencoder(builders.autoencoder_config(config))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, model.config.seq_len), jnp.int32)))
  path = autoencoder_final(workdir) / "params"
  if not path.is_dir():
    raise FileNotFoundError(f"No finished autoencoder at {path}: {workdir} holds no trained latent "
                            "model (cdm-train trains the autoencoder first).")
  return checkpointing.restore_tree(path, checkpointing.abstract_like(shapes,
                                                                      parallel.replicated(mesh)))


def restore_model_params(config, workdir: str, mesh, key: str = "ema_params", *, step=None,
                         extra: dict | None = None):
  """(parameters, the other restored fields, step) of the train state's `key` ("params" or
  "ema_params") at `step` (default: the newest), with a latent model's frozen encoder from
  `load_autoencoder`; `extra`: other fields of the state to restore ({name: abstract}). Both
  checkpoint formats read: with the encoder inside (before it was left out) and without."""
  abstract = builders.abstract_params(config, builders.make_model(config), mesh)
  restored, step = checkpointing.restore_subtree(
      workdir, {key: builders.without_encoder(config, abstract), **(extra or {})}, step)
  params = restored.pop(key)
  if builders.is_latent(config):
    params = builders.with_encoder(params, load_autoencoder(config, workdir, mesh)["params"])
  return params, restored, step


def student_path(workdir, steps: int):
  """Where the `steps`-step student of `workdir` lives."""
  return fs.path(workdir) / STUDENTS_DIR / f"steps_{steps}"


def read_student(workdir, steps: int) -> dict:
  """The student's `student.json` (what it was distilled from, and how); a clear error if none."""
  path = student_path(workdir, steps) / "student.json"
  if not path.is_file():
    have = sorted(p.name for p in (fs.path(workdir) / STUDENTS_DIR).glob("steps_*"))
    raise FileNotFoundError(f"No {steps}-step student in {workdir} (have: {have or 'none'}); "
                            f"distil one: cdm-distill --workdir={workdir} "
                            f"--target_steps={steps}.")
  return json.loads(path.read_text())


@dataclasses.dataclass(frozen=True)
class TrainedDecoder:
  """A trained decoder ready to apply: `module.apply(params, x0_hat, table, bias)` -> logits."""
  module: ContextualDecoder
  params: dict
  meta: dict

  @property
  def flops(self) -> float:
    return float(self.meta["flops"])


def load_decoder(workdir: str, model_config: ModelConfig, mesh) -> TrainedDecoder | None:
  """The decoder trained for `workdir` (parameters replicated over `mesh`), or None when there is
  none."""
  path = fs.path(workdir) / DECODER_DIR
  if not (path / "decoder.json").is_file():
    return None
  meta = json.loads((path / "decoder.json").read_text())
  module = ContextualDecoder(decoder_model_config(model_config,
                                                  ReadoutConfig.from_dict(meta["config"])))
  vocab, dim = model_config.vocab_size, model_config.embed_dim
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, model_config.seq_len, dim)), jnp.zeros((vocab, dim)),
                            jnp.zeros((vocab,)))
  abstract = checkpointing.abstract_like(
      abstract, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  return TrainedDecoder(module, checkpointing.restore_tree(path / "params", abstract), meta)
