"""The text autoencoder of the latent encoder (m != n): a contextual transformer encoder over the
n tokens, a Perceiver resampler to m = n / k learned queries (each added to a projection of its k
tokens' states), a projection to d dims normalized
before any noise, and a transformer decoder back to n token logits (EOS and PAD included).

E(w) = standardize(normalize(resample(encoder(w))))   [batch, m, d]
  (features="ar": encoder(project(h_LM(w))), h_LM the frozen final hidden states of the library's
  causal LM, LDLM's way; the decoder then also regresses h_LM, CE + align_weight x MSE)
D(x) = decoder(unstandardize(x))                       [batch, n, vocab]

`normalize` is a LayerNorm without scale or bias over the d dims (zero mean, unit variance per
latent): the encoder cannot scale its output up until the diffusion's noise stops mattering (the
failure replications of latent text diffusion report). The per-dimension standardization
statistics are parameters (`latent_mean`, `latent_std`), measured once after training and saved
with the weights.

Robustness augmentations in training (COSMOS, Meshchaninov et al. 2025), on their own draws so they
can be checked against NumPy (`augmentation_draws`, `augment_latents`):
  * on a random half of the batch, each position is hidden from the encoder's and the resampler's
    attention with probability `mask_rate`;
  * on the other half, variance-preserving noise z' = delta z + sqrt(1 - delta^2) eps;
  * on every example, element-wise latent dropout: z'' = z' keep / (1 - rate), keep ~ Bernoulli.
"""

import dataclasses
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from cdm_jax.models.config import ModelConfig
from cdm_jax.models.partitioning import logical
from cdm_jax.models.transformer import (Stack, TransformerLM, attention_bias, dense, layer_norm,
                                        rows)
from cdm_jax.runtime import registry

Array = jax.Array

FEATURES = ("scratch", "ar")
FEATURE_MODEL = "features"  # the frozen causal LM's subtree (features="ar")


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  vocab_size: int = 4000
  seq_len: int = 32             # n tokens
  latent_dim: int = 64          # d (the diffusion's model.embed_dim)
  ratio: int = 4                # k: m = seq_len / k latents
  width: int = 256
  num_heads: int = 4
  mlp_dim: int = 1024
  encoder_layers: int = 3
  resampler_layers: int = 2
  decoder_layers: int = 3
  # COSMOS's values are mask 0.3, delta 0.7, dropout 0.4 (768-dim latents); config_base says why
  # these defaults keep only the noise.
  mask_rate: float = 0.0        # attention-masking half: share of positions hidden
  noise_delta: float = 0.9      # noise half: z' = delta z + sqrt(1 - delta^2) eps
  latent_dropout: float = 0.0   # element-wise dropout rate on the latents (every example)
  # What the encoder reads: "scratch", token embeddings; "ar", the frozen final hidden states of
  # the library's causal LM (`TransformerLM`, feature_* sizes; LDLM's way), which the decoder also
  # regresses (MSE to their layer-normalized values, weight `align_weight`).
  features: str = "scratch"
  feature_width: int = 256
  feature_layers: int = 6
  feature_heads: int = 4
  feature_mlp_dim: int = 1024
  align_weight: float = 1.0
  # features="ar": also add each position's token embedding to its projected LM state (a copy
  # path: the LM's final states are shaped to predict the next token, not to keep this one).
  feature_copy: bool = False
  dtype: str = "float32"
  matmul_dtype: str = "float32"

  def __post_init__(self):
    if self.ratio < 1 or self.seq_len % self.ratio:
      raise ValueError(f"autoencoder ratio k={self.ratio} must be >= 1 and divide data.seq_len="
                       f"{self.seq_len}.")
    if not 0.0 <= self.mask_rate < 1.0 or not 0.0 <= self.latent_dropout < 1.0:
      raise ValueError("autoencoder mask_rate and latent_dropout must lie in [0, 1).")
    if self.features not in FEATURES:
      raise ValueError(f"autoencoder features must be one of {', '.join(FEATURES)}, got "
                       f"{self.features!r}.")
    if self.feature_copy and self.features != "ar":
      raise ValueError("autoencoder feature_copy adds token embeddings to the LM's states: it needs "
                       f"features='ar', got {self.features!r}.")
    if not 0.0 < self.noise_delta <= 1.0:
      raise ValueError(f"autoencoder noise_delta must lie in (0, 1], got {self.noise_delta}.")

  @property
  def num_latents(self) -> int:
    return self.seq_len // self.ratio

  def block_config(self, num_layers: int) -> ModelConfig:
    """The transformer blocks' configuration for a stack of `num_layers`."""
    return ModelConfig(vocab_size=self.vocab_size, seq_len=self.seq_len, embed_dim=self.latent_dim,
                       width=self.width, num_layers=num_layers, num_heads=self.num_heads,
                       mlp_dim=self.mlp_dim, dtype=self.dtype, matmul_dtype=self.matmul_dtype)

  def feature_config(self) -> ModelConfig:
    """The causal LM whose hidden states the encoder reads (features="ar")."""
    return ModelConfig(vocab_size=self.vocab_size, seq_len=self.seq_len, width=self.feature_width,
                       num_layers=self.feature_layers, num_heads=self.feature_heads,
                       mlp_dim=self.feature_mlp_dim, dtype=self.dtype,
                       matmul_dtype=self.matmul_dtype)

  @classmethod
  def from_dict(cls, values: dict):
    return registry.dataclass_from_dict(cls, values, "autoencoder config")


def layer_normalize(z: Array, eps: float = 1e-6) -> Array:
  """Zero mean and unit variance over the last axis, no learned scale or bias."""
  mean = jnp.mean(z, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(z - mean), axis=-1, keepdims=True)
  return (z - mean) * jax.lax.rsqrt(var + eps)


@flax.struct.dataclass
class AugmentationDraws:
  noise_half: Array    # [batch] bool: the example takes VP noise (else attention masking)
  position_u: Array    # [batch, n] uniforms: a position is hidden where < mask_rate
  noise: Array         # [batch, m, d] standard normals of the VP noise
  dropout_u: Array     # [batch, m, d] uniforms: an element is dropped where < latent_dropout


def augmentation_draws(key: Array, batch: int, config: AutoencoderConfig) -> AugmentationDraws:
  keys = jax.random.split(key, 4)
  m, n, d = config.num_latents, config.seq_len, config.latent_dim
  return AugmentationDraws(noise_half=jax.random.uniform(keys[0], (batch,)) < 0.5,
                           position_u=jax.random.uniform(keys[1], (batch, n)),
                           noise=jax.random.normal(keys[2], (batch, m, d)),
                           dropout_u=jax.random.uniform(keys[3], (batch, m, d)))


def attention_keep(draws: AugmentationDraws, mask_rate: float) -> Array:
  """[batch, n] bool: positions the encoder may attend to (all of them on the noise half)."""
  return (draws.position_u >= mask_rate) | draws.noise_half[:, None]


def augment_latents(z: Array, draws: AugmentationDraws, config: AutoencoderConfig) -> Array:
  """VP noise on the noise half, then element-wise dropout (inverted: kept elements / (1 - rate))."""
  delta = config.noise_delta
  noisy = delta * z + math.sqrt(1.0 - delta**2) * draws.noise
  z = jnp.where(draws.noise_half[:, None, None], noisy, z)
  rate = config.latent_dropout
  return jnp.where(draws.dropout_u >= rate, z / (1.0 - rate), 0.0) if rate else z


class CrossAttention(nn.Module):
  """Pre-LN cross-attention of queries [batch, m, width] to states [batch, n, width] + an MLP."""
  config: ModelConfig

  @nn.compact
  def __call__(self, queries, states, bias):
    cfg = self.config
    batch, m, width = queries.shape
    heads, head_dim = cfg.num_heads, width // cfg.num_heads
    q = rows(dense(cfg, width, "q", ("embed", "heads")), layer_norm(cfg, "ln_q")(queries))
    kv = rows(dense(cfg, 2 * width, "kv", ("embed", "heads")), layer_norm(cfg, "ln_kv")(states))
    q = q.reshape(batch, m, heads, head_dim).transpose(0, 2, 1, 3)
    kv = kv.reshape(batch, -1, 2, heads, head_dim).transpose(2, 0, 3, 1, 4)
    logits = jnp.matmul(q, kv[0].swapaxes(-1, -2)) / math.sqrt(head_dim)  # [batch, heads, m, n]
    if bias is not None:
      logits = logits + bias.astype(logits.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    attended = jnp.matmul(weights, kv[1]).transpose(0, 2, 1, 3).reshape(batch, m, width)
    x = queries + rows(dense(cfg, width, "attn_out", ("heads", "embed")), attended)
    h = nn.gelu(rows(dense(cfg, cfg.mlp_dim, "mlp_in", ("embed", "mlp")),
                     layer_norm(cfg, "ln_mlp")(x)))
    return x + rows(dense(cfg, width, "mlp_out", ("mlp", "embed")), h)


class TextAutoencoder(nn.Module):
  """E and D of the latent encoder; entry points `encode`, `decode`, `standardize`,
  `unstandardize` and `__call__` (the augmented training pass: tokens -> logits)."""
  config: AutoencoderConfig

  def setup(self):
    cfg = self.config
    blocks = cfg.block_config(0)
    n, m, width = cfg.seq_len, cfg.num_latents, cfg.width
    small = lambda *names: logical(nn.initializers.normal(0.02), *names)
    unit = lambda *names: logical(nn.initializers.normal(1.0), *names)
    # Token and position embeddings at the scale of the blocks' outputs (std ~1): at 0.02 the
    # first block's attention output (a mixture shared by all positions at init) drowns each
    # token's identity, and the autoencoder learns to copy several times slower.
    self.token_embed = self.param("token_embed", unit("vocab", "embed"), (cfg.vocab_size, width))
    self.encoder_pos = self.param("encoder_pos", unit("length", "embed"), (n, width))
    if cfg.features == "ar":
      self.feature_lm = TransformerLM(cfg.feature_config(), name=FEATURE_MODEL)
      self.feature_in = dense(blocks, width, "feature_in", ("mlp", "embed"))
      self.feature_out = dense(blocks, cfg.feature_width, "feature_out", ("embed", "mlp"))
    self.encoder = Stack(cfg.block_config(cfg.encoder_layers), name="encoder")
    self.queries = self.param("queries", small("length", "embed"), (m, width))
    self.chunk_proj = dense(blocks, width, "chunk_proj", ("mlp", "embed"))
    self.resampler = [CrossAttention(blocks, name=f"resampler_{i}")
                      for i in range(cfg.resampler_layers)]
    self.resampler_norm = layer_norm(blocks, "resampler_norm")
    self.to_latent = dense(blocks, cfg.latent_dim, "to_latent", ("embed", "latent"))
    self.from_latent = dense(blocks, cfg.ratio * width, "from_latent", ("latent", "mlp"))
    # At the scale of the projected latents (std ~1): the k positions that share a latent must be
    # told apart from the first step (at 0.02 the decoder trains several times slower).
    self.decoder_pos = self.param("decoder_pos", logical(nn.initializers.normal(1.0), "length",
                                                         "embed"), (n, width))
    self.decoder = Stack(cfg.block_config(cfg.decoder_layers), name="decoder")
    self.out_bias = self.param("out_bias", logical(nn.initializers.zeros, "vocab"),
                               (cfg.vocab_size,))
    self.latent_mean = self.param("latent_mean", logical(nn.initializers.zeros, "latent"),
                                  (cfg.latent_dim,))
    self.latent_std = self.param("latent_std", logical(nn.initializers.ones, "latent"),
                                 (cfg.latent_dim,))

  def features(self, tokens: Array) -> Array:
    """[batch, n, feature_width] float32: the frozen LM's final hidden states, layer-normalized
    (no gradient reaches the LM)."""
    _, hidden = self.feature_lm(tokens, return_hidden=True)
    return jax.lax.stop_gradient(layer_normalize(hidden))

  def encode(self, tokens: Array, keep: Array | None = None, features: Array | None = None) -> Array:
    """tokens [batch, n] -> normalized latents [batch, m, d]; `keep` [batch, n] bool hides the
    other positions from attention (the augmentation); `features`: `self.features(tokens)` when
    already computed."""
    cfg = self.config
    dtype = cfg.block_config(0).compute_dtype
    if cfg.features == "ar":
      features = self.features(tokens) if features is None else features
      inputs = rows(self.feature_in, features.astype(dtype))
      if cfg.feature_copy:
        inputs = inputs + jnp.take(self.token_embed, tokens, axis=0).astype(dtype)
    else:
      inputs = jnp.take(self.token_embed, tokens, axis=0)
    h = (inputs + self.encoder_pos[None]).astype(dtype)
    bias = attention_bias(keep, tokens.shape[1], False)
    h = self.encoder(h, None, bias, True)
    # Each query starts from a projection of its k tokens' states side by side (a mean would lose
    # their order): the resampler then only learns what to take from elsewhere.
    batch, n, width = h.shape
    if keep is not None:  # a hidden position's own state carries its token: drop it too
      h = jnp.where(keep[..., None], h, 0.0)
    chunks = h.reshape(batch, n // cfg.ratio, cfg.ratio * width)
    q = self.queries.astype(dtype)[None] + rows(self.chunk_proj, chunks)
    for block in self.resampler:
      q = block(q, h, bias)
    z = rows(self.to_latent, self.resampler_norm(q)).astype(jnp.float32)
    return layer_normalize(z)

  def decode(self, z: Array) -> Array:
    """Normalized latents [batch, m, d] -> logits [batch, n, vocab] (float32)."""
    return self._logits(self._decode_states(z))

  def _decode_states(self, z: Array) -> Array:
    cfg = self.config
    # Each latent is projected to its k positions' inputs side by side (the inverse of the
    # encoder's chunk projection), then the positions attend to each other.
    h = rows(self.from_latent, z.astype(cfg.block_config(0).compute_dtype))
    h = h.reshape(z.shape[0], cfg.seq_len, cfg.width) + self.decoder_pos[None].astype(h.dtype)
    return self.decoder(h, None, None, True).astype(jnp.float32)

  def _logits(self, h: Array) -> Array:
    cfg = self.config
    # Logits tied to the input embedding (scaled by 1/sqrt(width), as its rows have std 1): a
    # rare piece's vector learns from both ends.
    flat = h.reshape(-1, cfg.width) @ self.token_embed.T / math.sqrt(cfg.width) + self.out_bias
    return flat.reshape(h.shape[:-1] + (cfg.vocab_size,))

  def standardize(self, z: Array) -> Array:
    return (z - self.latent_mean) / self.latent_std

  def unstandardize(self, x: Array) -> Array:
    return x * self.latent_std + self.latent_mean

  def __call__(self, tokens: Array, draws: AugmentationDraws | None = None) -> Array:
    """Logits of D(augment(E(w))); without `draws`, D(E(w))."""
    return self.train_outputs(tokens, draws)[0]

  def train_outputs(self, tokens: Array, draws: AugmentationDraws | None = None):
    """(logits [batch, n, vocab], alignment MSE): the MSE of the decoder's regression of the
    frozen LM's features (features="ar"; 0 otherwise), per element."""
    cfg = self.config
    keep = None if draws is None else attention_keep(draws, cfg.mask_rate)
    features = self.features(tokens) if cfg.features == "ar" else None
    z = self.encode(tokens, keep, features)
    h = self._decode_states(z if draws is None else augment_latents(z, draws, cfg))
    if features is None:
      return self._logits(h), jnp.zeros((), jnp.float32)
    predicted = rows(self.feature_out, h.astype(cfg.block_config(0).compute_dtype))
    align = jnp.mean(jnp.square(predicted.astype(jnp.float32) - features))
    return self._logits(h), align
