"""The one frozen model configuration shared by the embedder, the denoiser and the AR judge."""

import dataclasses
from typing import Any

import jax.numpy as jnp

from cdm_jax.core import conditioning, parameterization
from cdm_jax.runtime import registry

ENCODERS = ("embedding", "latent")
CONTEXT_LAYOUTS = ("pairs", "positions", "marked", "split")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 4000
  seq_len: int = 32            # n, tokens per sequence
  encoder: str = "embedding"   # E: "embedding" (the table, m = n) | "latent" (the text autoencoder
                               # of `models.autoencoder`, m = n / latent_ratio)
  latent_ratio: int = 1        # k of the latent encoder
  embed_dim: int = 64          # d, the latent width the diffusion runs in
  width: int = 256             # transformer width
  num_layers: int = 6
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.0
  time_conditioning: str = "adaln"   # "adaln" (adaptive LayerNorm) or "add"
  self_conditioning: bool = True
  conditioning: bool = False    # accept known latents + mask (prefix / infilling) in denoise()
  source_context: bool = False  # latent conditions: the denoiser reads a row's clean latents in
                                # context, beside x_t (m more positions); set by the condition
                                # mixture of a latent config
  context_layout: str = "pairs"  # (source_context) "pairs": seq2seq, the source row in context and
                                 # the target row diffused; "marked" ("positions"): the row with
                                 # its unknown positions UNK (PAD) in context and the whole row
                                 # diffused (prefix, suffix, infilling, lengths); "split": the
                                 # prefix row in context, its continuation diffused (prefixes only)
  null_context: str = "zeros"   # (source_context) a dropped condition's context, the contrast of
                                # guidance: "zeros", or "length": the context row with its known
                                # pieces UNK (`conditioning.blank_known`), holding the length fixed
  normalize_embeddings: bool = False  # L2-normalize rows of E before every use (CDCD)
  embed_scale: float = 1.0      # rows have norm ~ embed_scale * sqrt(embed_dim)
  output: str = "x0"            # what the denoiser predicts: x0 | eps | v | logits | logits_prior
  dtype: str = "float32"        # compute dtype; parameters stay float32
  matmul_dtype: str = "float32"  # operand dtype of the transformers' Dense matmuls; they always
                                 # accumulate in float32 (benchmarks/NOTES.md)
  scan_layers: bool = False     # nn.scan over layers (cuts compile time for deep models)
  remat: bool = False           # recompute each block's activations in the backward pass (less
                                # memory, ~1/3 more compute); the parameters are the same
  pos_init_std: float = 0.02    # init std of the denoiser's learned position embedding; its input
                                # projection of x_t has std ~1 per unit, so at 0.02 the positions
                                # are invisible until training has grown them (see config_base)

  def __post_init__(self):
    if self.encoder not in ENCODERS:
      raise ValueError(f"model.encoder must be one of {ENCODERS}, got {self.encoder!r}.")
    if self.latent_ratio < 1 or self.seq_len % self.latent_ratio:
      raise ValueError(f"model.latent_ratio={self.latent_ratio} must be >= 1 and divide "
                       f"data.seq_len={self.seq_len}.")
    if self.source_context and self.encoder != "latent":
      raise ValueError("model.source_context is the latent encoder's seq2seq conditioning; an "
                       "embedding model conditions on known positions (model.conditioning).")
    if self.context_layout not in CONTEXT_LAYOUTS:
      raise ValueError(f"model.context_layout must be one of {CONTEXT_LAYOUTS}, got "
                       f"{self.context_layout!r}.")
    if self.null_context not in conditioning.NULL_CONTEXTS:
      raise ValueError(f"model.null_context must be one of {conditioning.NULL_CONTEXTS}, got "
                       f"{self.null_context!r}.")
    if self.null_context == "length" and self.encoder != "latent":
      raise ValueError("model.null_context='length' is a latent model's: an embedding model's null "
                       "condition already keeps the known mask, and so the known text's extent.")
    if self.null_context == "length" and self.source_context and self.context_layout == "marked":
      raise ValueError("model.null_context='length' blanks the known pieces of the context row, "
                       "which under context_layout='marked' leaves nothing apart from the unknown "
                       "ones (UNK): use 'positions' or 'split'.")
    if self.encoder == "latent" and parameterization.get(self.output).predicts_logits:
      raise ValueError(f"model.output={self.output!r} predicts logits over an embedding table; a "
                       "latent encoder has none: use x0, eps or v.")
    if parameterization.get(self.output).output_prior and not self.normalize_embeddings:
      raise ValueError(f"model.output={self.output!r} needs model.normalize_embeddings=True (the "
                       "prior assumes embeddings of equal norm).")
    if self.time_conditioning not in ("adaln", "add"):
      raise ValueError(f"model.time_conditioning must be adaln or add, got {self.time_conditioning!r}.")
    if self.width % self.num_heads:
      raise ValueError(f"model.width={self.width} is not divisible by num_heads={self.num_heads}.")
    for field in ("dtype", "matmul_dtype"):
      if getattr(self, field) not in _DTYPES:
        raise ValueError(f"model.{field} must be one of {sorted(_DTYPES)}, got "
                         f"{getattr(self, field)!r}.")

  @property
  def is_latent(self) -> bool:
    return self.encoder == "latent"

  @property
  def latent_length(self) -> int:
    """m, the latents per sequence the diffusion runs over."""
    return self.seq_len // self.latent_ratio if self.is_latent else self.seq_len

  @property
  def compute_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  @property
  def matmul_operand_dtype(self) -> Any:
    return _DTYPES[self.matmul_dtype]

  @classmethod
  def from_dict(cls, values: dict):
    return registry.dataclass_from_dict(cls, values, "model config")
