"""The autoregressive judge LM: trained once per corpus + tokenizer, cached, used to score text.

It doubles as the baseline a user would pick instead of diffusion: it samples (temperature /
top-p) so its samples can be scored exactly like the diffusion model's.
"""

import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cdm_jax.models import builders
from cdm_jax.runtime import checkpointing
from cdm_jax.training import fit
from cdm_jax.core import vocab_ops
from cdm_jax.data import batching, tokenizer as tokenizer_lib
from cdm_jax.models import ModelConfig, TransformerLM
from cdm_jax.models.transformer import TransformerLMStep

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  width: int = 256
  num_layers: int = 6
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.0  # short CPU runs do not overfit; dropout RNG is slow on CPU
  batch_size: int = 64
  learning_rate: float = 1e-3
  warmup_steps: int = 200
  max_steps: int = 20_000
  time_limit_minutes: float = 4.0  # the judge trains until max_steps or this much time; <= 0: no
  seed: int = 0                    # time limit, exactly max_steps (reproducible on a busy machine)


def judge_budget(minutes: float = JudgeConfig.time_limit_minutes, steps: int = 0) -> JudgeConfig:
  """The judge's training budget: `steps` > 0 trains exactly that many steps (learning rate decayed
  over them, no time limit); otherwise until `minutes` have passed (at most max_steps)."""
  if steps < 0:
    raise ValueError(f"judge steps must be >= 0, got {steps}.")
  if steps:
    return JudgeConfig(max_steps=steps, time_limit_minutes=0.0)
  if minutes <= 0:
    raise ValueError(f"judge minutes must be > 0 without a step budget, got {minutes}.")
  return JudgeConfig(time_limit_minutes=minutes)


def sized_like(model_config, **overrides) -> JudgeConfig:
  """A judge (or AR baseline) with a diffusion model's transformer sizes, trained for an exact
  number of steps (no time limit) unless `overrides` say otherwise."""
  return JudgeConfig(width=model_config.width, num_layers=model_config.num_layers,
                     num_heads=model_config.num_heads, mlp_dim=model_config.mlp_dim,
                     **{"time_limit_minutes": 0.0, **overrides})


GAP_JUDGE_SEED = 7  # the compute-gap judge's seed: none of the AR ladder's models (seed 0)


def gap_corpus_id(data_config) -> str:
  """The cache identity of the compute-gap judge's and ladder's training corpus."""
  return f"compute_gap:{data_config.corpus}:{data_config.path}:{data_config.max_examples}"


def cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get("CDM_JAX_CACHE", os.path.expanduser("~/.cache/cdm_jax"))) / "judges"


def cache_key(tokenizer, corpus_id: str, seq_len: int, config: JudgeConfig) -> str:
  digest = hashlib.sha256(tokenizer.serialized_model_proto())
  digest.update(json.dumps([corpus_id, seq_len, dataclasses.asdict(config)], sort_keys=True).encode())
  return digest.hexdigest()[:16]


@dataclasses.dataclass
class Judge:
  model: TransformerLM
  params: dict
  info: dict  # steps, wall time, parameter count, cache path

  def __post_init__(self):
    def forward(params, tokens):
      logits, hidden = self.model.apply(params, tokens, return_hidden=True)
      nll, mask = next_token_nll(logits, tokens)
      # Features for MAUVE: mean of the hidden states over BOS and the real tokens.
      seen = (tokens != tokenizer_lib.PAD_ID).astype(jnp.float32)
      features = jnp.sum(hidden * seen[..., None], 1) / jnp.maximum(jnp.sum(seen, 1, keepdims=True), 1)
      return jnp.sum(nll * mask, axis=1), jnp.sum(mask, axis=1), features
    self._forward = jax.jit(forward)

  def score(self, tokens: np.ndarray, batch_size: int = 256) -> dict:
    """Per-sequence NLL sums [n], token counts [n] (targets after BOS, EOS included), features."""
    outs = [self._forward(self.params, _pad_rows(tokens[i:i + batch_size], batch_size))
            for i in range(0, len(tokens), batch_size)]
    nll, count, feats = (np.concatenate([np.asarray(o[j]) for o in outs])[:len(tokens)] for j in range(3))
    return {"nll": nll, "tokens": count, "features": feats}

  def sample(self, num_samples: int, seed: int = 0, *, temperature: float = 1.0,
             top_p: float = 1.0, batch_size: int = 256, prompts: np.ndarray | None = None,
             cached: bool = True) -> np.ndarray:
    """Ancestral samples [num_samples, seq_len]: BOS, tokens, EOS, then PAD. `prompts`: optional
    rows [num_samples, seq_len] whose leading non-PAD tokens (e.g. `BOS source EOS`) are kept and
    continued, the AR model used as a prefix LM. `cached=False` recomputes every position at
    every step (no key/value cache; the same tokens, for checks and benchmarks)."""
    fn = _make_ar_sampler(self.model, batch_size, temperature, top_p, cached)
    length = self.model.config.seq_len
    if prompts is None:
      prompts = np.full((num_samples, length), tokenizer_lib.PAD_ID, np.int32)
      prompts[:, 0] = tokenizer_lib.BOS_ID
    if prompts.shape != (num_samples, length):
      raise ValueError(f"prompts must have shape {(num_samples, length)}, got {prompts.shape}.")
    rows = []
    for i in range(0, num_samples, batch_size):
      block = _pad_rows(prompts[i:i + batch_size], batch_size)
      key = jax.random.fold_in(jax.random.PRNGKey(seed), i // batch_size)
      rows.append(np.asarray(fn(self.params, key, block)))
    return np.concatenate(rows)[:num_samples]


def next_token_nll(logits, tokens):
  """Per-target NLL [batch, length - 1] of tokens[:, 1:] under logits[:, :-1], and the mask of
  real (non-PAD) targets."""
  targets = tokens[:, 1:]
  mask = (targets != tokenizer_lib.PAD_ID).astype(jnp.float32)
  return vocab_ops.token_cross_entropy(logits[:, :-1], targets), mask


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  if len(rows) == size:
    return rows
  return np.concatenate([rows, np.zeros((size - len(rows),) + rows.shape[1:], rows.dtype)])


def _pick(logits, key, temperature: float, top_p: float):
  """A next token [batch] drawn from logits [batch, vocab] at `temperature`, within the nucleus
  `top_p`; never PAD or BOS."""
  logits = logits / temperature
  logits = logits.at[:, tokenizer_lib.PAD_ID].set(-jnp.inf).at[:, tokenizer_lib.BOS_ID].set(-jnp.inf)
  if top_p < 1.0:  # nucleus: keep the smallest set of tokens whose mass reaches top_p
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits)


def _make_ar_sampler(model: TransformerLM, batch: int, temperature: float, top_p: float,
                     cached: bool = True):
  """jit((params, rng, prompts [batch, length]) -> samples): position i + 1 copies the prompt while
  i + 1 is inside its leading non-PAD run, and is sampled after it. `cached`: one position per
  step through the key/value cache (`TransformerLMStep`); else a whole forward pass per step."""
  length = model.config.seq_len
  step_model = TransformerLMStep(model.config)

  def next_logits(params, tokens, caches, i):
    if cached:
      return step_model.apply(params, tokens[:, i], i, caches)
    return model.apply(params, tokens)[:, i], caches

  @jax.jit
  def sample(params, rng, prompts):
    prompt_len = jnp.argmin(jnp.concatenate(
        [prompts != tokenizer_lib.PAD_ID, jnp.zeros((batch, 1), bool)], axis=1), axis=1)
    tokens = prompts.at[:, 0].set(tokenizer_lib.BOS_ID)
    caches = step_model.empty_caches(batch) if cached else None

    def body(i, carry):
      tokens, done, caches = carry
      logits, caches = next_logits(params, tokens, caches, i)
      token = _pick(logits, jax.random.fold_in(rng, i), temperature, top_p)
      token = jnp.where((i == length - 2) & ~done, tokenizer_lib.EOS_ID, token)  # force an end
      token = jnp.where(done, tokenizer_lib.PAD_ID, token)
      in_prompt = i + 1 < prompt_len
      token = jnp.where(in_prompt, prompts[:, i + 1], token)
      done = done | (~in_prompt & (token == tokenizer_lib.EOS_ID))
      return tokens.at[:, i + 1].set(token), done, caches

    tokens, _, _ = jax.lax.fori_loop(0, length - 1, body,
                                     (tokens, jnp.zeros((batch,), bool), caches))
    return tokens

  return sample


def _judge_model(vocab_size: int, seq_len: int, config: JudgeConfig) -> TransformerLM:
  return TransformerLM(ModelConfig(vocab_size=vocab_size, seq_len=seq_len, width=config.width,
                                   num_layers=config.num_layers, num_heads=config.num_heads,
                                   mlp_dim=config.mlp_dim, dropout_rate=config.dropout_rate))


def train_judge(train_tokens: np.ndarray, vocab_size: int, config: JudgeConfig) -> tuple[dict, dict]:
  """Trains the causal LM on [N, seq_len] token rows; returns (params, info)."""
  seq_len = train_tokens.shape[1]
  model = _judge_model(vocab_size, seq_len, config)
  params = model.init(jax.random.PRNGKey(config.seed), jnp.zeros((1, seq_len), jnp.int32))
  # A short step budget (e.g. --judge_steps=10) warms up over its first tenth at most.
  tx = builders.adamw_cosine(peak_learning_rate=config.learning_rate,
                             warmup_steps=min(config.warmup_steps, max(1, config.max_steps // 10)),
                             total_steps=config.max_steps, grad_clip_norm=1.0, weight_decay=0.01)

  def loss_fn(p, unused_frozen, tokens, rng):
    nll, mask = next_token_nll(model.apply(p, tokens, train=True, rngs={"dropout": rng}), tokens)
    return jnp.sum(nll * mask) / jnp.sum(mask), {}

  batches = batching.BatchIterator(train_tokens, config.batch_size, config.seed)
  params, fitted = fit.fit(loss_fn, params, tx, lambda _: next(batches),
                           num_steps=config.max_steps, key=jax.random.PRNGKey(config.seed + 1),
                           time_limit_minutes=config.time_limit_minutes, desc="AR model")
  info = {"steps": fitted["steps"], "train_seconds": fitted["train_seconds"],
          "final_train_loss": fitted["history"][-1]["loss"] if fitted["history"] else math.nan,
          "num_params": int(sum(x.size for x in jax.tree.leaves(params)))}
  return params, info


def get_judge(tokenizer, train_tokens: np.ndarray, corpus_id: str,
              config: JudgeConfig = JudgeConfig()) -> Judge:
  """Loads the cached judge for this corpus + tokenizer + config, training it on first use."""
  seq_len = train_tokens.shape[1]
  vocab_size = tokenizer.get_piece_size()
  folder = cache_root() / cache_key(tokenizer, corpus_id, seq_len, config)
  model = _judge_model(vocab_size, seq_len, config)
  info_file = folder / "info.json"
  if info_file.is_file():
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, seq_len), jnp.int32)))
    params = checkpointing.restore_tree(folder / "params", abstract)
    info = json.loads(info_file.read_text())
    log.info("Loaded the judge from %s (%d steps).", folder, info["steps"])
  else:
    log.info("Training the judge LM (cached in %s).", folder)
    params, info = train_judge(train_tokens, vocab_size, config)
    folder.mkdir(parents=True, exist_ok=True)
    checkpointing.save_tree(folder / "params", params)
    info_file.write_text(json.dumps({**info, "config": dataclasses.asdict(config)}, indent=2))
  info["cache"] = str(folder)
  return Judge(model, params, info)
