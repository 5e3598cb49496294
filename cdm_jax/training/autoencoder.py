"""The text autoencoder's training stage (`training.loop`), run in WORKDIR/autoencoder/ before a
latent diffusion model (model.encoder="latent") trains on the same workdir's data and tokenizer.

It trains `models.autoencoder.TextAutoencoder` with token cross-entropy at all n positions (EOS and
PAD included, so D also says where a text ends) under the robustness augmentations, checkpoints
and resumes like every stage (Orbax, data position, bit-identical continuation), logs to
WORKDIR/autoencoder/metrics.jsonl, and when done measures the per-dimension standardization
statistics of its clean latents on training batches, writes them into the parameters and saves
them with the report (held-out reconstruction accuracy, FLOPs) to WORKDIR/autoencoder/final/.
Rerunning finds that folder and trains nothing.
"""

import contextlib
import dataclasses
import json
import logging

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cdm_jax.core import conditioning, vocab_ops
from cdm_jax.data import batching, pipeline
from cdm_jax.data.tokenizer import PAD_ID
from cdm_jax.models import builders
from cdm_jax.models.autoencoder import FEATURE_MODEL, TextAutoencoder, augmentation_draws
from cdm_jax.models.transformer import TransformerLM
from cdm_jax.runtime import checkpointing, distributed, fs, parallel, periodic
from cdm_jax.sampling import artifacts
from cdm_jax.training import flops, loop

log = logging.getLogger(__name__)

AUTOENCODER_DIR = artifacts.AUTOENCODER_DIR
REPORT_FILE = "autoencoder.json"


@flax.struct.dataclass
class AEState:
  step: jax.Array     # scalar int32
  params: dict
  opt_state: object
  rng: jax.Array      # step keys are fold_in(rng, step)


def init_state(model: TextAutoencoder, tx, seed: int, feature_params=None) -> AEState:
  """Step 0; `feature_params`: the frozen LM's "params" collection (features="ar")."""
  init_key, state_key = jax.random.split(jax.random.PRNGKey(seed + 1))
  cfg = model.config
  params = model.init(init_key, jnp.zeros((1, cfg.seq_len), jnp.int32))
  if feature_params is not None:
    params = {**params, "params": {**params["params"], FEATURE_MODEL: feature_params}}
  return AEState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                 rng=state_key)


def reconstruction_counts(logits, tokens) -> dict:
  """Sums of the decoded accuracy: correct non-PAD tokens, non-PAD tokens, correct positions (PAD
  included), positions, rows decoded exactly."""
  predicted = vocab_ops.first_argmax(logits)
  correct = predicted == tokens
  content = tokens != PAD_ID
  f32 = lambda a: jnp.sum(a.astype(jnp.float32))
  return {"correct": f32(correct & content), "content": f32(content), "correct_all": f32(correct),
          "positions": jnp.asarray(correct.size, jnp.float32),
          "exact_rows": f32(jnp.all(correct, axis=-1))}


def make_train_step(model: TextAutoencoder, tx, condition: conditioning.ConditionConfig | None = None,
                    layout: str = "positions"):
  """jit((state, tokens [batch, n]) -> (state, metrics)): one AdamW step on the augmented CE.
  With `condition` (a latent model reading known text in context, by its context `layout`) the
  rows are first made into what that model's context and diffused rows hold
  (`conditioning.context_training_rows`), so E learns them too."""
  def loss_fn(params, tokens, key):
    if condition is not None:
      tokens = conditioning.context_training_rows(jax.random.fold_in(key, 1), tokens, condition,
                                                  layout)
    draws = augmentation_draws(key, tokens.shape[0], model.config)
    logits, align = model.apply(params, tokens, draws, method="train_outputs")
    ce = jnp.mean(vocab_ops.token_cross_entropy(logits, tokens))
    return ce + model.config.align_weight * align, (reconstruction_counts(logits, tokens), align)

  def step(state: AEState, tokens):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, (counts, align)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, tokens, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "train_accuracy": counts["correct"] / counts["content"],
               "grad_norm": optax.tree.norm(grads)}
    if model.config.features == "ar":
      metrics["align_mse"] = align
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return jax.jit(step, donate_argnums=(0,))


def evaluate(model: TextAutoencoder, params, rows: np.ndarray, *, batch_size: int,
             num_batches: int, mesh) -> dict:
  """Held-out reconstruction of D(E(w)) without augmentation on the first `num_batches` batches of
  `rows` (0: all): token accuracy (non-PAD), accuracy at every position, exact rows."""
  fn = jax.jit(lambda p, t: reconstruction_counts(model.apply(p, t), t))
  available = len(rows) // batch_size
  totals = None
  for i in range(min(num_batches, available) if num_batches else available):
    counts = fn(params, parallel.global_array(rows[i * batch_size:(i + 1) * batch_size], mesh))
    totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
  if totals is None:
    raise ValueError(f"Fewer held-out rows ({len(rows)}) than one batch ({batch_size}).")
  totals = distributed.to_host(totals)
  return {"token_accuracy": float(totals["correct"] / totals["content"]),
          "position_accuracy": float(totals["correct_all"] / totals["positions"]),
          "exact_match": float(totals["exact_rows"] * model.config.seq_len / totals["positions"]),
          "tokens": int(totals["content"])}


def latent_statistics(model: TextAutoencoder, params, batches, mesh) -> tuple[np.ndarray, np.ndarray]:
  """Per-dimension mean and standard deviation [d] of the clean, normalized latents over `batches`
  (host arrays [batch, n]), accumulated in float64."""
  encode = jax.jit(lambda p, t: model.apply(p, t, method="encode"))
  total = sq = None
  count = 0
  for tokens in batches:
    z = distributed.to_host(encode(params, parallel.global_array(tokens, mesh))).astype(np.float64)
    z = z.reshape(-1, z.shape[-1])
    total = z.sum(0) if total is None else total + z.sum(0)
    sq = (z**2).sum(0) if sq is None else sq + (z**2).sum(0)
    count += len(z)
  mean = total / count
  std = np.sqrt(np.maximum(sq / count - mean**2, 1e-12))
  return mean.astype(np.float32), std.astype(np.float32)


def with_statistics(params, mean, std):
  inner = dict(params["params"])
  inner.update(latent_mean=jnp.asarray(mean), latent_std=jnp.asarray(std))
  return {**params, "params": inner}


@dataclasses.dataclass
class _Run:
  directory: object
  settings: ml_collections.ConfigDict
  model: TextAutoencoder
  mesh: object
  tx: object
  step_fn: object
  batches: batching.BatchIterator
  manager: object
  spec: loop.LoopSpec
  seed: int
  feature_params: dict | None = None
  pending: list = dataclasses.field(default_factory=list)

  # The stage interface of `training.loop`.
  def restore_or_init(self) -> AEState:
    shapes = jax.eval_shape(lambda: init_state(self.model, self.tx, self.seed))
    latest = checkpointing.restore_latest(
        self.manager, checkpointing.abstract_like(shapes, parallel.replicated(self.mesh)))
    if latest is None:
      log.info("Training the text autoencoder in %s.", self.directory)
      return jax.device_put(init_state(self.model, self.tx, self.seed, self.feature_params),
                            parallel.replicated(self.mesh))
    state, data_state, step = latest
    self.batches.set_state(data_state)
    log.info("Resumed the autoencoder at step %d.", step)
    return state

  def dispatch(self, state: AEState, unused_step: int):
    return self.step_fn(state, parallel.shard_batch(next(self.batches), self.mesh))

  def after_step(self, state: AEState, step: int, metrics: dict, last: bool):
    self.pending.append(metrics)
    if periodic.itstime(step, self.settings.log_every_steps, last):
      values = jax.device_get(self.pending)
      record = {"step": step, **{k: float(np.mean([m[k] for m in values])) for k in values[0]}}
      self.pending = []
      if not np.isfinite(record["loss"]):
        raise FloatingPointError(f"Non-finite autoencoder loss by step {step}; lower "
                                 "autoencoder.learning_rate.")
      log.info("autoencoder %s", record)
      if distributed.is_primary():
        fs.append_line(self.directory / "metrics.jsonl", json.dumps(record))
    return state

  def checkpoint_due(self, unused_step: int) -> bool:
    return False

  def checkpoint_view(self, state):
    return state

  def paused(self):
    return contextlib.nullcontext()

  def close(self):
    pass


def autoencoder_flops(config: ml_collections.ConfigDict) -> float:
  """The stage's training FLOPs: steps x (forward x3, + the frozen LM's forward) at its batch,
  plus the frozen LM's own training (features="ar": its steps x `flops.ar_train_flops`, from
  `feature_model`'s info.json)."""
  ae = config.autoencoder
  total = ae.num_steps * flops.autoencoder_train_flops(builders.autoencoder_config(config),
                                                       ae.batch_size)
  if ae.get("features", "scratch") == "ar":
    total += feature_model_flops(config)
  return total


FEATURE_INFO = "info.json"


def feature_model_flops(config: ml_collections.ConfigDict) -> float:
  """The training FLOPs of the frozen LM in `autoencoder.feature_model`."""
  info = json.loads((fs.path(config.autoencoder.feature_model) / FEATURE_INFO).read_text())
  trained = info["config"]
  return info["steps"] * flops.ar_train_flops(
      width=trained["width"], num_layers=trained["num_layers"], mlp_dim=trained["mlp_dim"],
      seq_len=config.data.seq_len, vocab_size=config.data.vocab_size,
      batch_size=trained["batch_size"])


def load_feature_model(config: ml_collections.ConfigDict) -> dict:
  """The "params" collection of the causal LM in `autoencoder.feature_model` (a folder with
  `params/` and info.json, as `evaluation.ar_model.get_judge` caches the library's AR models);
  its sizes must be the autoencoder's feature_* sizes."""
  folder = config.autoencoder.get("feature_model", "")
  if not folder or not (fs.path(folder) / FEATURE_INFO).is_file():
    raise ValueError("autoencoder.features='ar' needs autoencoder.feature_model: a folder with the "
                     f"library's AR model (params/ and {FEATURE_INFO}); got {folder!r}. "
                     "experiments/ar_features.py trains one and prints its folder.")
  ae = builders.autoencoder_config(config)
  trained = json.loads((fs.path(folder) / FEATURE_INFO).read_text())["config"]
  wanted = {"width": ae.feature_width, "num_layers": ae.feature_layers,
            "num_heads": ae.feature_heads, "mlp_dim": ae.feature_mlp_dim}
  if {k: trained[k] for k in wanted} != wanted:
    raise ValueError(f"The AR model in {folder} has sizes { {k: trained[k] for k in wanted} }, "
                     f"but the autoencoder's feature_* settings say {wanted}.")
  model = TransformerLM(ae.feature_config())
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, ae.seq_len), jnp.int32)))
  return checkpointing.restore_tree(fs.path(folder) / "params", shapes)["params"]


def _final_paths(workdir):
  final = artifacts.autoencoder_final(workdir)
  return final / "params", final / REPORT_FILE


def load_final(config: ml_collections.ConfigDict, workdir: str, mesh):
  """(parameters with statistics, report) of a finished stage, or None."""
  report_path = _final_paths(workdir)[1]
  if not report_path.is_file():
    return None
  return artifacts.load_autoencoder(config, workdir, mesh), json.loads(report_path.read_text())


def train(config: ml_collections.ConfigDict, workdir: str, data: pipeline.Dataset, mesh):
  """Trains (or resumes, or finds finished) the autoencoder of `config` in `workdir`; returns
  (its "params" collection with the standardization statistics, its report), or None when it
  stopped early (SIGTERM, train.time_limit_minutes; checkpointed: rerun to resume)."""
  done = load_final(config, workdir, mesh)
  if done is not None:
    return done[0]["params"], done[1]
  data = autoencoder_data(config, data)
  settings = config.autoencoder
  model = TextAutoencoder(builders.autoencoder_config(config))
  directory = fs.path(workdir) / AUTOENCODER_DIR
  tx = builders.adamw_cosine(peak_learning_rate=settings.learning_rate,
                             warmup_steps=settings.warmup_steps, total_steps=settings.num_steps,
                             grad_clip_norm=1.0, weight_decay=settings.weight_decay)
  feature_params = None
  if model.config.features == "ar":  # the LM takes no update (no weight decay either)
    feature_params = load_feature_model(config)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda p: builders.frozen_labels(p, FEATURE_MODEL))
  batches = batching.BatchIterator(data.train, settings.batch_size, config.seed + 1,
                                   jax.process_index(), jax.process_count(),
                                   shuffle_window=data.shuffle_window)
  run = _Run(directory=directory, settings=settings, model=model, mesh=mesh, tx=tx,
             step_fn=make_train_step(model, tx, *_context_masking(config)), batches=batches,
             manager=checkpointing.make_manager(str(directory), max_to_keep=2),
             spec=loop.LoopSpec(total_steps=settings.num_steps,
                                checkpoint_every_steps=settings.checkpoint_every_steps,
                                time_limit_minutes=config.train.time_limit_minutes,
                                stop_at_step=settings.get("stop_at_step", 0), desc="autoencoder"),
             seed=config.seed, feature_params=feature_params)
  state, step = loop.run(run)
  if step < settings.num_steps:
    log.warning("The autoencoder stopped at step %d of %d; rerun the same command to resume it.",
                step, settings.num_steps)
    return None
  return _finish(run, config, workdir, data, state.params)


def _context_masking(config: ml_collections.ConfigDict) -> tuple:
  """(condition mixture, context layout) of a latent model reading known text in context (the
  autoencoder learns its context and diffused rows beside whole rows), or () for any other
  model (seq2seq "pairs": `autoencoder_data`)."""
  model_cfg = builders.model_config(config)
  if model_cfg.source_context and model_cfg.context_layout != "pairs":
    return builders.condition_config(config), model_cfg.context_layout
  return ()


def autoencoder_data(config: ml_collections.ConfigDict, data: pipeline.Dataset) -> pipeline.Dataset:
  """The rows the autoencoder learns: for a latent seq2seq model (`source_context`) each
  `BOS source EOS target EOS` row split into its source row and its target row (the diffusion
  encodes them apart), else the rows as they are."""
  model_cfg = builders.model_config(config)
  if not (model_cfg.source_context and model_cfg.context_layout == "pairs"):
    return data
  split = lambda rows: np.concatenate(conditioning.split_pairs(np.asarray(rows)))  # on the host
  return dataclasses.replace(data, train=split(data.train), valid=split(data.valid))


def _finish(run: _Run, config, workdir, data: pipeline.Dataset, params):
  settings = config.autoencoder
  wanted = min(settings.stats_batches * settings.batch_size, len(data.train))
  # Sampled rows, not an N-long permutation (a prepared corpus may hold billions of rows).
  stats_rows = np.random.default_rng(config.seed + 2).choice(len(data.train), wanted, replace=False)
  batches = [data.train[stats_rows[i:i + settings.batch_size]]
             for i in range(0, len(stats_rows), settings.batch_size)]
  mean, std = latent_statistics(run.model, params, batches, run.mesh)
  params = with_statistics(params, mean, std)
  report = {"steps": settings.num_steps,
            "train_flops": autoencoder_flops(config),
            "valid": evaluate(run.model, params, data.valid, batch_size=settings.batch_size,
                              num_batches=settings.eval_batches, mesh=run.mesh),
            "latent_std_range": [float(std.min()), float(std.max())],
            "num_latents": run.model.config.num_latents, "latent_dim": run.model.config.latent_dim}
  params_path, report_path = _final_paths(workdir)
  checkpointing.save_tree(params_path, params)
  distributed.on_primary(lambda: report_path.write_text(json.dumps(report, indent=2)),
                         f"writing {report_path}")
  log.info("Autoencoder done: held-out token accuracy %.4f (%s).",
           report["valid"]["token_accuracy"], report_path)
  return params["params"], report
