"""Flax modules: the embedding table, the transformer denoiser and the autoregressive judge."""

from cdm_jax.models.config import ModelConfig
from cdm_jax.models.diffusion_lm import DenoiserOutput, DiffusionLM, Embedder
from cdm_jax.models.transformer import TransformerDenoiser, TransformerLM

__all__ = ["ModelConfig", "DenoiserOutput", "DiffusionLM", "Embedder", "TransformerDenoiser",
           "TransformerLM"]
