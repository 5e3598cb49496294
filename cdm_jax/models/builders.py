"""What a config builds: the model, the schedule, the loss and sampling configs, the optimizer,
the initial state and the abstract states that checkpoints are restored into.

`train`, `generate` and `evaluate` all build from here, so none of them depends on another.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cdm_jax.runtime import checkpointing
from cdm_jax.core import conditioning
from cdm_jax.core import diffusion
from cdm_jax.runtime import fs
from cdm_jax.runtime import parallel
from cdm_jax.runtime import config_record as record
from cdm_jax.core import sample_options
from cdm_jax.core import schedules
from cdm_jax.models import train_state
from cdm_jax.models import DiffusionLM, ModelConfig, partitioning
from cdm_jax.models.autoencoder import AutoencoderConfig

CONFIG_FILE = record.CONFIG_FILE


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a workdir was trained with."""
  path = fs.path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"No {CONFIG_FILE} in {workdir!r}: not a cdm_jax workdir.")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The `model` block with n and the vocabulary from `data`. A latent model trained with
  conditions reads them in context (`source_context`): seq2seq sources (condition.source > 0) as
  source rows ("pairs"), prefixes, suffixes and templates (condition.prefix / suffix / spans) as
  the row with its unknown positions marked: UNK with model.context_layout="marked", else PAD
  ("positions", what a config without the field, e.g. an older workdir's, means); prefixes alone
  as their own row with the continuation diffused apart with "split"."""
  shares = config.condition.to_dict() if "condition" in config else {}
  source = shares.get("source", 0.0) > 0
  positions = any(shares.get(kind, 0.0) > 0 for kind in ("prefix", "suffix", "spans"))
  layout = config.model.get("context_layout", "positions")
  return ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": config.data.vocab_size,
                                "seq_len": config.data.seq_len,
                                "source_context": is_latent(config) and (source or positions),
                                "context_layout": "pairs" if source else (
                                    layout if layout in ("marked", "split") else "positions")})


# Keys of the `autoencoder` block that configure its training stage, not the module.
AUTOENCODER_STAGE_KEYS = ("batch_size", "num_steps", "learning_rate", "warmup_steps",
                          "weight_decay", "checkpoint_every_steps", "log_every_steps",
                          "eval_batches", "stats_batches", "stop_at_step", "feature_model")


def autoencoder_config(config: ml_collections.ConfigDict) -> AutoencoderConfig:
  """The text autoencoder of a latent config: its `autoencoder` block's sizes with n, vocabulary,
  k = model.latent_ratio and d = model.embed_dim from the rest of the config."""
  if "autoencoder" not in config:
    raise ValueError("model.encoder='latent' needs an `autoencoder` block (config_base."
                     "autoencoder(); see configs/wordnet_latent.py).")
  values = {k: v for k, v in config.autoencoder.to_dict().items()
            if k not in AUTOENCODER_STAGE_KEYS}
  return AutoencoderConfig.from_dict({
      **values, "vocab_size": config.data.vocab_size, "seq_len": config.data.seq_len,
      "latent_dim": config.model.embed_dim, "ratio": config.model.get("latent_ratio", 1),
      "dtype": config.model.dtype, "matmul_dtype": config.model.matmul_dtype})


def is_latent(config: ml_collections.ConfigDict) -> bool:
  return config.model.get("encoder", "embedding") == "latent"


def make_model(config: ml_collections.ConfigDict) -> DiffusionLM:
  cfg = model_config(config)
  return DiffusionLM(cfg, autoencoder_config(config) if cfg.is_latent else None)


def make_schedule(config: ml_collections.ConfigDict) -> schedules.Schedule:
  return schedules.from_config(config.diffusion)


def condition_config(config: ml_collections.ConfigDict) -> conditioning.ConditionConfig:
  """The `condition` block (absent in workdirs from before it existed: nothing known)."""
  values = config.condition.to_dict() if "condition" in config else {}
  condition = conditioning.ConditionConfig.from_dict(values)
  if is_latent(config):
    if condition.source and (condition.prefix or condition.suffix or condition.spans):
      raise ValueError("A latent model reads either seq2seq sources (condition.source) or known "
                       "positions (condition.prefix / suffix / spans) in context, not both: set "
                       "the other shares to 0.")
    if (config.model.get("context_layout") == "split" and not condition.source
        and (condition.suffix or condition.spans)):
      raise ValueError("model.context_layout='split' reads prefixes only (the prefix row in "
                       "context, its continuation diffused apart): set condition.suffix and "
                       "condition.spans to 0, or use 'positions' for suffixes and templates.")
  elif condition.active and not config.model.conditioning:
    raise ValueError("The condition mixture trains with known positions: set "
                     "model.conditioning=True (or all condition shares to 0).")
  return condition


LATENT_CONDITION_ERROR = (
    "This latent model was trained without conditions (condition.prefix, suffix, spans and source "
    "all 0), so it reads no context: sample it unconditionally, or train it with the condition "
    "mixture (e.g. --config.condition.prefix=0.2 --config.condition.suffix=0.1 "
    "--config.condition.spans=0.2) for prefixes, suffixes, templates and lengths.")
LATENT_PREFIX_ONLY_ERROR = (
    "This latent model reads prefixes only (model.context_layout='split': the prefix row in "
    "context, the continuation diffused apart): sample(prefix=...) or cdm-generate --prefix, not a "
    "suffix, template or length; those need a model trained with context_layout 'positions'.")
LATENT_SOURCE_ONLY_ERROR = (
    "This latent model was trained on seq2seq sources (condition.source > 0): it reads a source "
    "row (BOS source EOS) in context, so it takes sources only (generate(sources), cdm-generate "
    "--source), not a prefix, suffix, template or length; those need a latent model trained "
    "with condition.prefix / suffix / spans.")


def latent_condition_error(model_cfg: ModelConfig) -> str:
  """Why a latent model refuses a condition its context layout cannot take."""
  if not model_cfg.source_context:
    return LATENT_CONDITION_ERROR
  return LATENT_PREFIX_ONLY_ERROR if model_cfg.context_layout == "split" else LATENT_SOURCE_ONLY_ERROR


def latent_condition_fits(model_cfg: ModelConfig, known: np.ndarray, known_mask: np.ndarray) -> bool:
  """Whether a latent model reads this condition (host-side rows): "pairs" sources
  (`BOS source EOS` known), "split" prefixes, "positions" / "marked" any known positions. Rows
  with nothing known (a batch's padding) sample unconditionally, which every layout can."""
  if not model_cfg.source_context:
    return False
  given = np.asarray(known_mask).any(axis=-1)
  known, known_mask = np.asarray(known)[given], np.asarray(known_mask)[given]
  if model_cfg.context_layout == "pairs":
    return conditioning.is_source_layout(known, known_mask)
  if model_cfg.context_layout == "split":
    return conditioning.is_prefix_layout(known_mask)
  return True


def loss_config(config: ml_collections.ConfigDict) -> diffusion.LossConfig:
  if is_latent(config) and config.diffusion.rounding_weight:
    raise ValueError("diffusion.rounding_weight trains the embedding table through its read-out; "
                     "a latent model's encoder is frozen: set it to 0 (anchor_weight trains the "
                     "denoiser through the decoder instead).")
  fields = ("rounding_weight", "anchor_weight", "mask_padding", "self_cond_prob", "time_warp",
            "importance_weight", "warp_follow")
  return diffusion.LossConfig.from_dict({**{k: config.diffusion[k] for k in fields
                                            if k in config.diffusion},  # older workdirs: defaults
                                         "condition": condition_config(config)})


def sample_config(config: ml_collections.ConfigDict) -> sample_options.SampleConfig:
  """The `sample` block as a frozen `SampleConfig`; `.replace()` it per call."""
  return sample_options.SampleConfig.from_dict(config.sample.to_dict())


def adamw_cosine(*, peak_learning_rate: float, warmup_steps: int, total_steps: int,
                 grad_clip_norm: float, weight_decay: float) -> optax.GradientTransformation:
  """AdamW (b2 = 0.99) with linear warm-up, cosine decay to 10% of the peak, optional clipping:
  the recipe of both the diffusion model and the AR judge."""
  return adamw(cosine_schedule(peak_learning_rate, warmup_steps, total_steps),
               grad_clip_norm=grad_clip_norm, weight_decay=weight_decay)


def cosine_schedule(peak_learning_rate: float, warmup_steps: int, total_steps: int
                    ) -> optax.Schedule:
  """Linear warm-up, then cosine decay to 10% of the peak at `total_steps`."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_learning_rate, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=0.1 * peak_learning_rate)


def adamw(learning_rate, *, grad_clip_norm: float, weight_decay: float
          ) -> optax.GradientTransformation:
  """AdamW (b2 = 0.99) at `learning_rate` (a number or a schedule), after global-norm clipping
  when `grad_clip_norm` > 0."""
  chain = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  chain.append(optax.adamw(learning_rate, b2=0.99, weight_decay=weight_decay))
  return optax.chain(*chain)


SCHEDULES = ("cosine", "wsd")
COOLDOWNS = ("linear", "cosine")


def cooldown_start(train_config) -> int:
  """The first step of a "wsd" run's cooldown: num_train_steps less its cooldown_fraction share
  (never inside the warm-up). A branch at budget N starts from the step this gives for N."""
  total = train_config.num_train_steps
  start = total - int(round(train_config.get("cooldown_fraction", 0.2) * total))
  return max(start, min(train_config.warmup_steps, total))


def wsd_schedule(*, peak_learning_rate: float, warmup_steps: int, total_steps: int,
                 cooldown_from: int, cooldown: str = "linear") -> optax.Schedule:
  """Warmup-stable-decay: linear warm-up over `warmup_steps`, the peak until `cooldown_from`, then a
  linear or cosine cooldown to 0 at `total_steps`. Until `cooldown_from` it does not depend on
  `total_steps`, so one stable run can be cooled down at any of its checkpoints (a branch)."""
  if cooldown not in COOLDOWNS:
    raise ValueError(f"train.cooldown must be one of {COOLDOWNS}, got {cooldown!r}.")
  length = max(total_steps - cooldown_from, 1)
  decay = (optax.linear_schedule(peak_learning_rate, 0.0, length) if cooldown == "linear" else
           optax.cosine_decay_schedule(peak_learning_rate, length))
  warm = optax.linear_schedule(0.0, peak_learning_rate, warmup_steps)
  return optax.join_schedules([warm, optax.constant_schedule(peak_learning_rate), decay],
                              [warmup_steps, cooldown_from])


def learning_rate_schedule(train_config) -> optax.Schedule:
  """train.schedule: "cosine" (warm-up, cosine decay to 10% of the peak at num_train_steps) or
  "wsd" (warm-up, constant, a cooldown_fraction share of the steps cooled to 0)."""
  kind = train_config.get("schedule", "cosine")
  if kind not in SCHEDULES:
    raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {kind!r}.")
  if kind == "cosine":
    return cosine_schedule(train_config.learning_rate, train_config.warmup_steps,
                           train_config.num_train_steps)
  return wsd_schedule(peak_learning_rate=train_config.learning_rate,
                      warmup_steps=train_config.warmup_steps,
                      total_steps=train_config.num_train_steps,
                      cooldown_from=cooldown_start(train_config),
                      cooldown=train_config.get("cooldown", "linear"))


def make_optimizer(train_config) -> optax.GradientTransformation:
  return adamw(learning_rate_schedule(train_config), grad_clip_norm=train_config.grad_clip_norm,
               weight_decay=train_config.weight_decay)


FROZEN_ENCODER = "embedder"  # the subtree of a latent model's parameters that never trains


def frozen_labels(params, subtree: str = FROZEN_ENCODER):
  """"frozen" for the leaves under `subtree` (default: the latent encoder), "train" for the rest."""
  def label(path, _):
    return "frozen" if any(getattr(k, "key", None) == subtree for k in path) else "train"
  return jax.tree_util.tree_map_with_path(label, params)


def make_model_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """`make_optimizer(config.train)`; for a latent model the autoencoder's parameters take no
  update at all (no weight decay either) and have no optimizer state."""
  tx = make_optimizer(config.train)
  if not is_latent(config):
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, frozen_labels)


def init_params(config, model: DiffusionLM):
  init_key = jax.random.split(jax.random.PRNGKey(config.seed))[0]
  cfg = model.config
  return model.init(init_key, jnp.zeros((1, cfg.seq_len), jnp.int32), jnp.zeros((1,)))


def with_encoder(params, encoder_params):
  """`params` with a latent model's frozen encoder replaced by the trained autoencoder's
  parameters (`TextAutoencoder`'s "params" collection)."""
  inner = dict(params["params"])
  inner[FROZEN_ENCODER] = {"autoencoder": encoder_params}
  return {**params, "params": inner}


def without_encoder(config, params):
  """`params` as checkpoints hold them: a latent model's frozen encoder left out (it is the
  trained autoencoder's, read back from WORKDIR/autoencoder/final); other models' unchanged."""
  if not is_latent(config):
    return params
  return {**params, "params": {k: v for k, v in params["params"].items() if k != FROZEN_ENCODER}}


def checkpoint_view(config, state: train_state.TrainState) -> train_state.TrainState:
  """The train state as checkpointed: parameters and EMA `without_encoder`."""
  return state.replace(params=without_encoder(config, state.params),
                       ema_params=without_encoder(config, state.ema_params))


def with_frozen_encoder(config, state: train_state.TrainState, encoder_params):
  """The inverse of `checkpoint_view` (a no-op for token-level models): parameters and EMA with
  the trained autoencoder's parameters as their frozen encoder."""
  if not is_latent(config):
    return state
  return state.replace(params=with_encoder(state.params, encoder_params),
                       ema_params=with_encoder(state.ema_params, encoder_params))


def init_state(config, model: DiffusionLM, tx, encoder_params=None) -> train_state.TrainState:
  """Step 0's state; `encoder_params`: a latent model's trained autoencoder (required to train
  one; shapes alone need none)."""
  state_key = jax.random.split(jax.random.PRNGKey(config.seed))[1]
  params = init_params(config, model)
  if encoder_params is not None:
    params = with_encoder(params, encoder_params)
  return train_state.init_train_state(params, tx, state_key, config.diffusion.warp_bins)


def fsdp_min_size(config) -> int | None:
  """The FSDP threshold of `parallel.state_specs`, or None for a replicated train state."""
  return config.train.get("fsdp_min_size", 4096) if config.train.get("fsdp", False) else None


def make_mesh(config, devices=None):
  """The ('data', 'fsdp') mesh of `config.train`: `num_devices` per process (0: all), FSDP groups
  of `fsdp_axis_size` devices with train.fsdp (0: all of them), else 1 (replicated); over
  `devices` when given (a TPU topology's), else `jax.devices()`."""
  tcfg = config.train
  fsdp = tcfg.get("fsdp_axis_size", 0) if tcfg.get("fsdp", False) else 1
  return parallel.make_mesh(tcfg.num_devices or None, fsdp=fsdp, devices=devices)


def state_layout(config, model: DiffusionLM, tx, mesh):
  """The train state's shapes (`jax.eval_shape` of `init_state`) and PartitionSpecs on `mesh`:
  split over its 'fsdp' axis by the parameters' logical axis names (`parallel.RULES`) with
  train.fsdp, else replicated."""
  shapes, names = partitioning.logical_specs(lambda: init_state(config, model, tx))
  return shapes, parallel.state_specs(shapes, names, mesh, fsdp_min_size(config))


def state_specs(config, model: DiffusionLM, tx, mesh):
  """The train state's PartitionSpecs on `mesh` (`state_layout`'s second part)."""
  return state_layout(config, model, tx, mesh)[1]


def abstract_state(config, model: DiffusionLM, tx, mesh, *, layout=None):
  """The train state's structure, shapes and shardings (replicated, or sharded with train.fsdp),
  for restoring; a checkpoint restores under either. `layout`: `state_layout`'s result, if known."""
  shapes, specs = layout or state_layout(config, model, tx, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                      parallel.shardings(mesh, specs))


def abstract_params(config, model: DiffusionLM, mesh):
  """The parameters' structure, shapes and shardings: what sampling restores (no optimizer)."""
  shapes = jax.eval_shape(lambda: init_params(config, model))
  return checkpointing.abstract_like(shapes, parallel.replicated(mesh))


def abstract_warp(config, mesh):
  shapes = jax.eval_shape(lambda: schedules.init_time_warp(config.diffusion.warp_bins))
  return checkpointing.abstract_like(shapes, parallel.replicated(mesh))
