"""A contextual read-out decoder (TEncDM, CoDAR): the sampler's final latents -> tokens, in context.

The built-in decoders round each position on its own (argmax of the tied read-out, nearest
embedding). This one, a small bidirectional transformer, reads the whole sequence of latents. It is
trained after the diffusion model, on that model's frozen embedding table E and read-out bias b.
Its inputs are clean latents with Gaussian noise at the diffusion's own noise levels near the end of
sampling (TEncDM trains its decoder on latents noised to t <= 0.15 of its schedule):

    y = z_t / gamma_t = x0 + (sigma_t / gamma_t) eps = x0 + exp(-lambda(t) / 2) eps,
    t ~ U[0, max_t] (one t per sequence), eps ~ N(0, I),

on the scale of x0, like the estimate x0_hat the sampler ends with, which is what it reads at
sampling time. Its logits are

    logits = (a y + net(y)) . E^T + b + b',

with a learned scalar a (starting at 1), a correction net(y) whose output layer starts at zero, and
a learned bias offset b' (starting at 0): untrained, it decodes exactly as the tied read-out
(`sample.decoder="readout"`), and training teaches it what the context adds. The loss is
cross-entropy at every position (PAD included: it also decodes where a sample ends).

`python -m cdm_jax.readout --workdir=DIR` trains it on the workdir's corpus from the newest
checkpoint's EMA parameters and writes `DIR/readout_decoder/` (parameters + `decoder.json`, with
its training FLOPs, which `experiments/compute_gap.py` adds to the diffusion budget when it samples
with it); `--set decoder=contextual` there, `--decoder=contextual` in `cdm_jax.generate`, or
`cdm_jax.load(DIR).sample(..., decoder="contextual")` use it. Rerunning trains it again from
scratch (a few minutes; nothing to resume).
"""

import dataclasses
import json
import logging
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cdm_jax import builders, checkpointing, cli, distributed, flops, fs, host, registry
from cdm_jax.data import pipeline
from cdm_jax.models.config import ModelConfig
from cdm_jax.models.partitioning import logical
from cdm_jax.models.transformer import Stack, dense, rows

log = logging.getLogger("cdm_jax.readout")
Array = jax.Array
DECODER_DIR = "readout_decoder"


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


def noisy_inputs(x0: Array, log_snr: Array, eps: Array) -> Array:
  """The decoder's training input x0 + exp(-lambda / 2) eps (= z_t / gamma_t), for x0 and eps
  [batch, length, dim] and one log-SNR lambda per sequence [batch]."""
  return x0 + jnp.exp(-0.5 * log_snr)[:, None, None] * eps


def make_train_step(decoder: ContextualDecoder, schedule, tx, config: ReadoutConfig):
  """The jit-compiled `(params, opt_state, tokens, table, bias, key) -> (params, opt_state, loss,
  accuracy)`; tokens [batch, length] int; table and bias frozen (no gradient)."""

  def loss_fn(params, tokens, table, bias, key):
    t_key, eps_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (tokens.shape[0],), maxval=config.max_t)
    x0 = jnp.take(table, tokens, axis=0)
    y = noisy_inputs(x0, schedule.log_snr(t), jax.random.normal(eps_key, x0.shape))
    logits = decoder.apply(params, y, table, bias)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == tokens)
    return jnp.mean(nll), accuracy

  @jax.jit
  def step(params, opt_state, tokens, table, bias, key):
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, tokens, table,
                                                                        bias, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  return step


def train(workdir: str, config: ReadoutConfig) -> dict:
  """Trains the decoder for `workdir`'s newest checkpoint and writes it (see the module doc);
  returns what `decoder.json` records."""
  # pylint: disable-next=g-import-not-at-top  (generate imports this module)
  from cdm_jax import generate
  host.tune_malloc()
  generator = generate.load(workdir)
  model_config = builders.model_config(generator.config)
  dec_config = decoder_model_config(model_config, config)
  decoder = ContextualDecoder(dec_config)
  table, bias = (distributed.to_host(a) for a in
                 generator.model.apply(generator.params, method="readout_weights"))
  table, bias = jnp.asarray(table, jnp.float32), jnp.asarray(bias, jnp.float32)
  data = pipeline.prepare_data(generator.config.data, workdir)
  key = jax.random.PRNGKey(config.seed)
  init_key, key = jax.random.split(key)
  params = decoder.init(init_key, jnp.zeros((1, dec_config.seq_len, dec_config.embed_dim)),
                        table, bias)
  tx = builders.adamw_cosine(peak_learning_rate=config.learning_rate,
                             warmup_steps=config.warmup_steps, total_steps=config.steps,
                             grad_clip_norm=1.0, weight_decay=0.0)
  opt_state = tx.init(params)
  step_fn = make_train_step(decoder, generator.schedule, tx, config)
  rng = np.random.default_rng(config.seed)
  start, history = time.perf_counter(), []
  for i in range(config.steps):
    tokens = data.train[rng.integers(0, len(data.train), config.batch_size)]
    params, opt_state, loss, accuracy = step_fn(params, opt_state, jnp.asarray(tokens), table,
                                                bias, jax.random.fold_in(key, i))
    if (i + 1) % max(1, config.steps // 10) == 0 or i + 1 == config.steps:
      history.append({"step": i + 1, "loss": float(loss), "accuracy": float(accuracy)})
      log.info("decoder step %d: loss %.4f, accuracy %.4f", i + 1, loss, accuracy)
  path = fs.path(workdir) / DECODER_DIR
  checkpointing.save_tree(path / "params", params)
  meta = {"checkpoint_step": generator.step, "train_seconds": time.perf_counter() - start,
          "flops": config.steps * flops.readout_decoder_train_flops(
              model_config, num_layers=config.num_layers, batch_size=config.batch_size),
          "metrics": history, "config": dataclasses.asdict(config)}
  distributed.on_primary(lambda: fs.write_atomic(path / "decoder.json", json.dumps(meta, indent=2)),
                         f"writing {path}/decoder.json")
  return meta


@dataclasses.dataclass(frozen=True)
class TrainedDecoder:
  """A trained decoder ready to apply: `module.apply(params, x0_hat, table, bias)` -> logits."""
  module: ContextualDecoder
  params: dict
  meta: dict

  @property
  def flops(self) -> float:
    return float(self.meta["flops"])


def load(workdir: str, model_config: ModelConfig, mesh) -> TrainedDecoder | None:
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


def main(argv=None):
  helps = {"num_layers": "Transformer blocks of the decoder.",
           "max_t": "Training noise: t ~ U[0, max_t] on the diffusion's schedule.",
           "steps": "Optimizer steps.", "batch_size": "Sequences per step.",
           "learning_rate": "AdamW's peak learning rate (cosine decay to 10%).",
           "warmup_steps": "Linear warm-up steps.", "seed": "Initialisation, noise and data order."}
  cli.run_workdir_job(ReadoutConfig, helps, train, argv, workdir_help="A trained workdir.")


if __name__ == "__main__":
  main()
