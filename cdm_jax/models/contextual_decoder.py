"""The contextual read-out decoder's network (TEncDM, CoDAR): a small bidirectional transformer from
the sampler's final latents to token logits against the diffusion model's frozen table (trained by
`cdm_jax.posttrain.readout`, loaded by `cdm_jax.sampling.artifacts`)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from cdm_jax.models.config import ModelConfig
from cdm_jax.models.partitioning import logical
from cdm_jax.models.transformer import Stack, dense, rows
from cdm_jax.runtime import registry

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ReadoutConfig:
  """How the decoder is built and trained (its width and MLP follow the diffusion model's)."""
  num_layers: int = 2
  max_t: float = 0.7           # training noise: t ~ U[0, max_t] on the diffusion's schedule
  steps: int = 300
  batch_size: int = 64
  learning_rate: float = 1e-3
  warmup_steps: int = 30
  seed: int = 0

  def __post_init__(self):
    for field in ("num_layers", "steps", "batch_size"):
      if not getattr(self, field) >= 1:
        raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}.")
    if not 0.0 <= self.max_t <= 1.0:
      raise ValueError(f"max_t must lie in [0, 1], got {self.max_t}.")
    if not self.learning_rate > 0 or self.warmup_steps < 0:
      raise ValueError("learning_rate must be > 0 and warmup_steps >= 0.")

  @classmethod
  def from_dict(cls, values: dict) -> "ReadoutConfig":
    return registry.dataclass_from_dict(cls, values, "read-out decoder config")


def decoder_model_config(model_config: ModelConfig, config: ReadoutConfig) -> ModelConfig:
  """The diffusion model's sizes with the decoder's depth, unscanned, without remat or dropout."""
  return dataclasses.replace(model_config, num_layers=config.num_layers, scan_layers=False,
                             remat=False, dropout_rate=0.0)


class ContextualDecoder(nn.Module):
  """latents y [batch, length, embed_dim] -> logits [batch, length, vocab] against a given table."""
  config: ModelConfig

  @nn.compact
  def __call__(self, y: Array, table: Array, bias: Array) -> Array:
    cfg = self.config
    dtype = cfg.compute_dtype
    length = y.shape[1]
    h = rows(dense(cfg, cfg.width, "in_proj", ("latent", "embed")), y.astype(dtype))
    pos = self.param("pos_embedding", logical(nn.initializers.normal(cfg.pos_init_std),
                                              "length", "embed"), (cfg.seq_len, cfg.width))
    h = Stack(cfg, name="stack")(h + pos[None, :length].astype(dtype), None, None, True)
    correction = rows(dense(cfg, cfg.embed_dim, "out_proj", ("embed", "latent"),
                            nn.initializers.zeros), h).astype(jnp.float32)
    weight = self.param("input_weight", nn.initializers.ones, ())
    bias_offset = self.param("bias_offset", logical(nn.initializers.zeros, "vocab"), bias.shape)
    x = (weight * y.astype(jnp.float32) + correction).reshape(-1, y.shape[-1])
    logits = x @ table.T.astype(jnp.float32) + bias + bias_offset
    return logits.reshape(y.shape[:-1] + (-1,))
