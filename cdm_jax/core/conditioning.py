"""Conditions as known positions: which ones a training example reveals, how a prompt becomes known
tokens, how a latent model reads them in context (`context_rows`), classifier-free guidance.

A condition is a pair (known tokens [length] int, known mask [length] bool). The denoiser sees the
clean latents of the known positions in place of their noisy ones and a learned marker on them
(`model.conditioning=True`); the loss counts only the unknown positions. Training draws one kind
of mask per example from a mixture (as CDCD does):

  none    nothing known: the unconditional model;
  prefix  BOS and the first k - 1 pieces, k uniform in [1, n - 1] for an example of n non-PAD tokens;
  suffix  BOS and every position from k on, k in [2, n - 1] (the text's tail, EOS, PAD);
  spans   alternating known / unknown spans of geometric length (mean `span_length`), BOS known;
  source  everything up to and including the first EOS: the source half of a seq2seq example
          `BOS source EOS target EOS PAD...` (DiffuSeq's partial noising).

With probability `dropout` an example's known latents are zeros (the null condition), which
classifier-free guidance contrasts with (`guide`); a latent model with `null_context="length"`
keeps the known text's extent in its null context instead (`blank_known`). Prompts for sampling
(`prefix_layout`, `template_layout`, `source_layout`) are host-side NumPy; a template marks a gap
with `___` (the default length) or `___:N` (N pieces), e.g. "the ___:3 of a tree".
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from cdm_jax.runtime import registry
from cdm_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

Array = jax.Array
KINDS = ("none", "prefix", "suffix", "spans", "source")
GAP = re.compile(r"___(?::(\d+))?")
# What a latent model's context row holds at unknown positions, by `ModelConfig.context_layout`:
# "positions" PAD (unknown reads as empty, as in workdirs trained before "marked"), "marked" UNK
# (unknown reads as unknown, apart from a row that ends).
UNKNOWN_FILL = {"positions": PAD_ID, "marked": UNK_ID}
# A latent model's null context (guidance's contrast), by `ModelConfig.null_context`: "zeros", or
# "length", the dropped condition's context row `blank_known`: how much text is known, not what.
NULL_CONTEXTS = ("zeros", "length")


@dataclasses.dataclass(frozen=True)
class ConditionConfig:
  """Shares of the training mixture (`none` takes the rest) and the null-condition rate."""
  prefix: float = 0.0
  suffix: float = 0.0
  spans: float = 0.0
  source: float = 0.0
  span_length: float = 4.0   # mean length of the spans (both known and unknown ones)
  dropout: float = 0.0       # probability of the null condition (classifier-free guidance)

  def __post_init__(self):
    shares = [getattr(self, kind) for kind in KINDS[1:]]
    if min(shares) < 0 or sum(shares) > 1 + 1e-6:
      raise ValueError(f"condition shares {dict(zip(KINDS[1:], shares))} must be >= 0 and sum to "
                       "at most 1 (the rest trains unconditionally).")
    if not self.span_length >= 1:
      raise ValueError(f"condition.span_length must be >= 1, got {self.span_length}.")
    if not 0 <= self.dropout < 1:
      raise ValueError(f"condition.dropout must be in [0, 1), got {self.dropout}.")

  @property
  def active(self) -> bool:
    return any(getattr(self, kind) for kind in KINDS[1:])

  def probabilities(self) -> np.ndarray:
    """[len(KINDS)] probabilities of each mask kind."""
    shares = np.array([getattr(self, kind) for kind in KINDS[1:]], np.float64)
    return np.concatenate([[max(0.0, 1.0 - shares.sum())], shares])

  @classmethod
  def from_dict(cls, values: dict):
    return registry.dataclass_from_dict(cls, values, "condition config")


def _spans(key: Array, length: int, span_length: float) -> Array:
  """[length] bool: alternating runs whose lengths are geometric with mean `span_length`, the
  first run's state a fair coin."""
  switch_key, start_key = jax.random.split(key)
  switches = jax.random.uniform(switch_key, (length,)) < 1.0 / span_length
  parity = jnp.cumsum(switches.astype(jnp.int32)) + jax.random.bernoulli(start_key).astype(jnp.int32)
  return parity % 2 == 1


def draw_known(key: Array, tokens: Array, config: ConditionConfig) -> Array:
  """Known mask [length] bool for one example `tokens` [length] (vmap it over a batch)."""
  length = tokens.shape[0]
  kind_key, cut_key, span_key = jax.random.split(key, 3)
  kind = jax.random.choice(kind_key, len(KINDS), p=jnp.asarray(config.probabilities(), jnp.float32))
  positions = jnp.arange(length)
  n = jnp.sum(tokens != PAD_ID)
  # prefix: k uniform in [1, n - 1] (BOS known, the EOS unknown); suffix: k in [2, n - 1] (at
  # least position 1 unknown, the EOS known)
  u = jax.random.uniform(cut_key)
  k = 1 + jnp.floor(u * jnp.maximum(n - 1, 1)).astype(jnp.int32)
  k_suffix = 2 + jnp.floor(u * jnp.maximum(n - 2, 1)).astype(jnp.int32)
  first_eos = jnp.argmax(tokens == EOS_ID)
  bos = positions == 0
  masks = jnp.stack([
      jnp.zeros((length,), bool),
      positions < k,
      bos | (positions >= k_suffix),
      bos | _spans(span_key, length, config.span_length),
      positions <= first_eos,
  ])
  return masks[kind]


def _draw_rows(key: Array, tokens: Array, condition: ConditionConfig) -> Array:
  """Known masks [batch, n] for rows `tokens`, row i's from `fold_in(key, i)`."""
  draw = lambda i, row: draw_known(jax.random.fold_in(key, i), row, condition)
  return jax.vmap(draw)(jnp.arange(tokens.shape[0]), tokens)


def masked_rows(key: Array, tokens: Array, condition: ConditionConfig, fill: int = PAD_ID) -> Array:
  """`tokens` [batch, n] with each row's unknown positions `fill` under a known mask drawn from the
  condition mixture (rows drawn unconditioned stay whole): the context rows a latent model with
  known positions in context encodes (prefix rows without their EOS, suffix and template rows)."""
  known = _draw_rows(key, tokens, condition)
  whole = ~jnp.any(known, axis=-1, keepdims=True)
  return jnp.where(whole | known, tokens, fill)


def context_training_rows(key: Array, tokens: Array, condition: ConditionConfig,
                          layout: str) -> Array:
  """What the autoencoder of a latent model reading known text in context learns beside whole
  rows: "positions" / "marked" `masked_rows`; "split" each conditioned row's prefix row or its
  continuation row (a fair coin per row, `context_rows`). Rows drawn unconditioned stay whole."""
  if layout in UNKNOWN_FILL:
    return masked_rows(key, tokens, condition, UNKNOWN_FILL[layout])
  mask_key, coin_key = jax.random.split(key)
  known = _draw_rows(mask_key, tokens, condition)
  head, tail = context_rows(tokens, known, layout)
  take_head = jnp.any(known, axis=-1) & jax.random.bernoulli(coin_key, shape=(tokens.shape[0],))
  return jnp.where(take_head[:, None], head, tail)


def draw_condition(key: Array, tokens: Array, config: ConditionConfig) -> tuple[Array, Array]:
  """(known mask [length] bool, null condition: scalar bool) for one example."""
  mask_key, drop_key = jax.random.split(key)
  return draw_known(mask_key, tokens, config), jax.random.bernoulli(drop_key, config.dropout)


def guide(x0_cond: Array, x0_null: Array, scale: float) -> Array:
  """Classifier-free guidance on x0 estimates: x0_null + (1 + w)(x0_cond - x0_null). The same
  combination of eps estimates follows, since eps_hat is affine in x0_hat at a fixed x_t; w = 0 is
  the plain conditional estimate."""
  if scale == 0:
    return x0_cond
  return x0_null + (1.0 + scale) * (x0_cond - x0_null)


# ---------------------------------------------------------------------------------------------
# Prompts -> (known tokens, known mask), host side.

def _pieces(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text)) if text.strip() else []


def _check_fits(used: int, seq_len: int, what: str):
  if used > seq_len:
    raise ValueError(f"The {what} needs {used} positions (BOS, pieces, EOS, gaps) but sequences "
                     f"hold {seq_len} (data.seq_len); shorten it.")


def prefix_layout(tokenizer, prefix: str, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """BOS and the prefix's pieces known; the rest (continuation, EOS, PAD) is generated."""
  ids = [BOS_ID] + _pieces(tokenizer, prefix)
  _check_fits(len(ids) + 1, seq_len, "prefix")  # room for at least one generated position
  known = np.full((seq_len,), PAD_ID, np.int32)
  known[:len(ids)] = ids
  mask = np.zeros((seq_len,), bool)
  mask[:len(ids)] = True
  return known, mask


def parse_template(template: str, gap_length: int) -> list[str | int]:
  """Text segments (str) and gap lengths (int) in order: "a ___ b ___:2" -> ["a", 4, "b", 2]."""
  if gap_length < 1:
    raise ValueError(f"gap_length must be >= 1, got {gap_length}.")
  parts, start = [], 0
  for match in GAP.finditer(template):
    if template[start:match.start()].strip():
      parts.append(template[start:match.start()])
    length = int(match.group(1)) if match.group(1) else gap_length
    if length < 1:
      raise ValueError(f"A gap needs at least one piece: {match.group(0)!r} in {template!r}.")
    parts.append(length)
    start = match.end()
  if template[start:].strip():
    parts.append(template[start:])
  if not any(isinstance(p, int) for p in parts):
    raise ValueError(f"No gap in {template!r}: mark each gap with ___ (default length) or ___:N.")
  return parts


def template_layout(tokenizer, template: str, seq_len: int,
                    gap_length: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """The template's text known, its gaps unknown, then EOS and PAD known: the output is exactly the
  template with each gap filled by as many pieces as the gap's length."""
  ids, mask = [BOS_ID], [True]
  for part in parse_template(template, gap_length):
    if isinstance(part, int):
      ids += [PAD_ID] * part
      mask += [False] * part
    else:
      pieces = _pieces(tokenizer, part)
      ids += pieces
      mask += [True] * len(pieces)
  ids.append(EOS_ID)
  mask.append(True)
  _check_fits(len(ids), seq_len, "template")
  rest = seq_len - len(ids)
  return (np.array(ids + [PAD_ID] * rest, np.int32),
          np.array(mask + [True] * rest, bool))


def length_layout(length: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """BOS, `length` generated pieces, then EOS and PAD known: a sample of exactly that length."""
  if length < 1:
    raise ValueError(f"A length must be >= 1, got {length}.")
  _check_fits(length + 2, seq_len, "length")
  known = np.full((seq_len,), PAD_ID, np.int32)
  known[0], known[length + 1] = BOS_ID, EOS_ID
  mask = np.ones((seq_len,), bool)
  mask[1:length + 1] = False
  return known, mask


def source_layout(tokenizer, source: str, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """`BOS source EOS` known (the seq2seq layout); the target, its EOS and PAD are generated."""
  ids = [BOS_ID] + _pieces(tokenizer, source) + [EOS_ID]
  _check_fits(len(ids) + 1, seq_len, "source")
  known = np.full((seq_len,), PAD_ID, np.int32)
  known[:len(ids)] = ids
  mask = np.zeros((seq_len,), bool)
  mask[:len(ids)] = True
  return known, mask


def _first_eos(tokens: Array, xp=jnp) -> Array:
  """[..., 1] index of each row's first EOS (the row's length when there is none)."""
  is_eos = tokens == EOS_ID
  return xp.where(xp.any(is_eos, -1, keepdims=True), xp.argmax(is_eos, -1)[..., None],
                  tokens.shape[-1])


def _split_at(tokens, split, xp):
  """Rows [..., n] cut before position `split` [..., 1] (>= 1): (the rows up to it, PAD after;
  the rows from it on as `BOS rest... PAD`)."""
  n = tokens.shape[-1]
  positions = xp.arange(n)
  head = xp.where(positions < split, tokens, PAD_ID)
  index = split - 1 + positions  # tail position j >= 1 is the row's position split - 1 + j
  tail = xp.where(index < n, xp.take_along_axis(tokens, xp.minimum(index, n - 1), -1), PAD_ID)
  return head, xp.where(positions == 0, BOS_ID, tail)


def _join_at(head: Array, tail: Array, split: Array) -> Array:
  """The inverse of `_split_at`: the head's positions before `split`, then the tail's pieces
  after its BOS, cut at n."""
  n = head.shape[-1]
  positions = jnp.arange(n)
  from_tail = jnp.take_along_axis(tail, jnp.clip(positions - split + 1, 0, n - 1), -1)
  return jnp.where(positions < split, head, from_tail)


def split_pairs(tokens: Array) -> tuple[Array, Array]:
  """Seq2seq rows `BOS source EOS target EOS PAD...` [..., n] -> (source rows `BOS source EOS PAD...`,
  target rows `BOS target EOS PAD...`), each laid out as a plain row of n, so that a latent model
  encodes them apart (its source goes in context). A row without EOS is all source. NumPy rows
  (a whole corpus) stay on the host; others are traced with jnp."""
  xp = np if isinstance(tokens, np.ndarray) else jnp
  tokens = xp.asarray(tokens)
  return _split_at(tokens, _first_eos(tokens, xp) + 1, xp)


def leading_known(known: Array) -> Array:
  """[..., 1] the length of each row's leading run of known positions, at least 1 (BOS): where a
  "split" model cuts a prefix from its continuation (nothing known: the whole row diffuses)."""
  xp = np if isinstance(known, np.ndarray) else jnp
  run = xp.sum(xp.cumprod(xp.asarray(known).astype(xp.int32), axis=-1), axis=-1, keepdims=True)
  return xp.maximum(run, 1)


def context_rows(tokens: Array, known: Array, layout: str) -> tuple[Array, Array]:
  """(context rows, diffused rows) of a latent model that reads its condition in context:
  "pairs" (seq2seq) splits `BOS source EOS target EOS` rows (`split_pairs`); "split" cuts each row
  after its known prefix, `BOS prefix PAD...` in context and the continuation diffused as a row of
  its own, `BOS continuation EOS PAD...`; "positions" and "marked" keep the whole row to diffuse
  and put the row with its unknown positions PAD, or UNK (`UNKNOWN_FILL`), in context (a prefix, a
  suffix, a template's known text), position for position."""
  if layout == "pairs":
    return split_pairs(tokens)
  xp = np if isinstance(tokens, np.ndarray) else jnp
  if layout == "split":
    return _split_at(xp.asarray(tokens), leading_known(known), xp)
  return xp.where(known, tokens, UNKNOWN_FILL[layout]), tokens


def blank_known(rows: Array) -> Array:
  """Context rows [..., n] with every piece but BOS, EOS and PAD UNK: a dropped condition's context
  under `null_context="length"`, the known text's extent without its words."""
  xp = np if isinstance(rows, np.ndarray) else jnp
  rows = xp.asarray(rows)
  keep = (xp.arange(rows.shape[-1]) == 0) | (rows == PAD_ID) | (rows == EOS_ID)
  return xp.where(keep, rows, UNK_ID)


def join_pairs(source: Array, target: Array) -> Array:
  """The inverse of `split_pairs`: `BOS source EOS` then the target's pieces after its BOS,
  cut at n."""
  return _join_at(source, target, _first_eos(source) + 1)


def join_context(layout: str, known: Array, known_mask: Array, tokens: Array) -> Array:
  """A source-context model's sampled rows `tokens` as whole rows: "pairs" targets after their
  `BOS source EOS`, "split" continuations after their prefixes; the other layouts diffuse whole
  rows already."""
  if layout == "pairs":
    return join_pairs(jnp.where(known_mask, known, PAD_ID), tokens)
  if layout == "split":  # (a row with nothing known is a whole sampled row)
    joined = _join_at(known, tokens, leading_known(known_mask))
    return jnp.where(jnp.any(known_mask, axis=-1, keepdims=True), joined, tokens)
  return tokens


def is_source_layout(known: np.ndarray, mask: np.ndarray) -> bool:
  """Whether every (known, mask) row is a `source_layout`: exactly BOS .. the first EOS known."""
  known, mask = np.asarray(known), np.asarray(mask)
  return bool(np.array_equal(mask, np.arange(known.shape[-1]) <= np.asarray(_first_eos(known))))


def is_prefix_layout(known_mask: np.ndarray) -> bool:
  """Whether every mask row is a prefix's: BOS and a leading run known, nothing after it, at least
  one position left to generate."""
  mask = np.asarray(known_mask, bool)
  lead = np.asarray(leading_known(mask))
  # (`leading_known` is at least 1, so a row without BOS known fails the comparison)
  return bool((lead < mask.shape[-1]).all() and np.array_equal(mask, np.arange(mask.shape[-1]) < lead))


def target_tokens(tokens: np.ndarray) -> np.ndarray:
  """The part of a seq2seq sequence after its first EOS (the whole row when there is none)."""
  eos = np.flatnonzero(tokens == EOS_ID)
  return tokens[eos[0] + 1:] if len(eos) else tokens
