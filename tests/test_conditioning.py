"""Conditional generation: training masks, the loss's known positions, prompt layouts, guidance,
and conditional sampling with an exact denoiser."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cdm_jax
from cdm_jax.core import conditioning, mbr
from cdm_jax.core import diffusion
from cdm_jax import sampling
from cdm_jax.runtime import parallel
from cdm_jax.core import sample_options, samplers
from cdm_jax.core import schedules
from cdm_jax.data import encoding, tokenizer as tokenizer_lib
from cdm_jax.models import DiffusionLM, ModelConfig

PAD, BOS, EOS = tokenizer_lib.PAD_ID, tokenizer_lib.BOS_ID, tokenizer_lib.EOS_ID


def _rows(lengths, seq_len=12, eos_twice=False):
  """Token rows BOS, pieces 5.., EOS, PAD with `lengths` non-PAD tokens each."""
  rows = np.full((len(lengths), seq_len), PAD, np.int32)
  for i, n in enumerate(lengths):
    rows[i, :n] = 5 + np.arange(n)
    rows[i, 0], rows[i, n - 1] = BOS, EOS
    if eos_twice:
      rows[i, n // 2] = EOS
  return rows


def _draw(kind, rows, seed=0, **fields):
  config = conditioning.ConditionConfig(**({kind: 1.0} if kind != "none" else {}), **fields)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(rows))
  draw = jax.jit(jax.vmap(lambda k, r: conditioning.draw_known(k, r, config)))
  return np.asarray(draw(keys, jnp.asarray(rows)))


def test_prefix_and_suffix_masks_keep_bos_known_and_leave_something_to_generate():
  lengths = np.tile([3, 5, 9, 12], 50)
  rows = _rows(lengths)
  for kind in ("prefix", "suffix"):
    cuts = []
    for row, n, known in zip(rows, lengths, _draw(kind, rows)):
      assert known[0] and not known.all()
      if kind == "prefix":
        k = known.sum()
        np.testing.assert_array_equal(known, np.arange(12) < k)
        assert 1 <= k <= n - 1  # the EOS is always generated
      else:
        k = np.argmax(known[1:]) + 1
        np.testing.assert_array_equal(known[1:], np.arange(1, 12) >= k)
        assert 2 <= k <= n - 1 and known[n - 1] and known[n:].all()  # tail, EOS and PAD known
      cuts.append(k)
    assert len(set(cuts)) >= 8, kind  # the cut varies


def test_source_mask_is_everything_up_to_the_first_eos():
  rows = _rows([6, 9, 12], eos_twice=True)
  for row, known in zip(rows, _draw("source", rows)):
    first = np.flatnonzero(row == EOS)[0]
    np.testing.assert_array_equal(known, np.arange(12) <= first)


def test_span_masks_alternate_with_the_configured_mean_length():
  rows = _rows([12] * 400, seq_len=64)
  known = _draw("spans", rows, span_length=4.0)
  assert known[:, 0].all()
  runs = []
  for row in known[:, 1:]:
    changes = np.flatnonzero(np.diff(row.astype(int))) + 1
    runs += np.diff(changes).tolist()  # whole runs only (not cut by either end)
  assert abs(np.mean(runs) - 4.0) < 0.4, np.mean(runs)  # geometric, mean 1 / p
  assert 0.4 < known[:, 1:].mean() < 0.6
  assert not _draw("none", rows[:20]).any()


def test_condition_config_refuses_bad_shares():
  with pytest.raises(ValueError, match="sum to at most 1"):
    conditioning.ConditionConfig(prefix=0.7, spans=0.5)
  with pytest.raises(ValueError, match="dropout"):
    conditioning.ConditionConfig(dropout=1.0)
  np.testing.assert_allclose(conditioning.ConditionConfig(prefix=0.2, suffix=0.1).probabilities(),
                             [0.7, 0.2, 0.1, 0.0, 0.0])


def _loss_setup():
  cfg = ModelConfig(vocab_size=16, seq_len=8, embed_dim=4, width=16, num_layers=1, num_heads=2,
                    mlp_dim=16, conditioning=True, output="eps", self_conditioning=False)
  model = DiffusionLM(cfg)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), jnp.zeros((1,)))
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, 16, (2, 8)), jnp.int32)
  known = jnp.asarray(np.arange(8) < 3)[None].repeat(2, 0)
  inputs = diffusion.LossInputs(
      tokens=tokens, mask=jnp.ones((2, 8), bool), t=jnp.array([0.3, 0.7]), weight=jnp.ones(2),
      noise=jax.random.normal(jax.random.PRNGKey(1), (2, 2, 8, 4)), self_cond=jnp.array(False),
      known=known, null_cond=jnp.zeros(2, bool))
  config = diffusion.LossConfig(rounding_weight=1.0)
  loss = jax.jit(lambda inp: diffusion.training_losses(
      model, params, inp, schedules.get_schedule("cosine"), config, train=False))
  return inputs, loss


def test_known_positions_never_enter_the_loss():
  inputs, loss = _loss_setup()
  base, (metrics, _) = loss(inputs)
  assert float(metrics["tokens"]) == 2 * 5  # unknown positions only
  noise = np.asarray(inputs.noise).copy()
  noise[:, :, :3] += 5.0  # the eps target and the rounding noise of known positions move a lot
  same, _ = loss(inputs.replace(noise=jnp.asarray(noise)))
  assert abs(float(same) - float(base)) < 1e-5 * abs(float(base))
  noise[:, :, 5] += 5.0  # an unknown position's noise does count
  moved, _ = loss(inputs.replace(noise=jnp.asarray(noise)))
  assert abs(float(moved) - float(base)) > 1e-2


def test_the_null_condition_hides_the_known_tokens():
  inputs, loss = _loss_setup()
  tokens = np.asarray(inputs.tokens).copy()
  tokens[:, :3] = (tokens[:, :3] + 5) % 12 + 4  # other known tokens
  changed = inputs.replace(tokens=jnp.asarray(tokens))
  assert abs(float(loss(changed)[0]) - float(loss(inputs)[0])) > 1e-3  # the condition is used
  null = jnp.ones(2, bool)
  np.testing.assert_allclose(float(loss(changed.replace(null_cond=null))[0]),
                             float(loss(inputs.replace(null_cond=null))[0]), rtol=1e-6)


class _Tokenizer:
  """Word-level stand-in for SentencePiece: word i of `words` is id 4 + i."""

  def __init__(self, words):
    self.words = list(words)

  def encode(self, text):
    return [4 + self.words.index(w) for w in text.split()]


def test_template_layout_is_verbatim_with_gaps_and_a_known_ending():
  tok = _Tokenizer("the of a tree cat".split())
  assert [p if isinstance(p, int) else p.strip() for p in
          conditioning.parse_template("the ___ of a ___:2", 3)] == ["the", 3, "of a", 2]
  known, mask = conditioning.template_layout(tok, "the ___:2 of a tree", 10, gap_length=4)
  np.testing.assert_array_equal(known, [BOS, 4, PAD, PAD, 5, 6, 7, EOS, PAD, PAD])
  np.testing.assert_array_equal(mask, [1, 1, 0, 0, 1, 1, 1, 1, 1, 1])
  known, mask = conditioning.prefix_layout(tok, "the cat", 6)
  np.testing.assert_array_equal(known[mask], [BOS, 4, 8])
  assert not mask[3:].any()
  known, mask = conditioning.source_layout(tok, "a tree", 6)
  np.testing.assert_array_equal(known[mask], [BOS, 6, 7, EOS])
  np.testing.assert_array_equal(conditioning.target_tokens(np.array([BOS, 6, EOS, 8, EOS, PAD])),
                                [8, EOS, PAD])
  for call, match in [(lambda: conditioning.template_layout(tok, "the cat", 10), "No gap"),
                      (lambda: conditioning.template_layout(tok, "the ___:9", 10), "needs 12"),
                      (lambda: conditioning.prefix_layout(tok, "the cat the cat", 5), "needs 6"),
                      (lambda: conditioning.parse_template("a ___:0", 4), "at least one")]:
    with pytest.raises(ValueError, match=match):
      call()


def test_length_layouts_and_the_corpus_length_distribution():
  known, mask = conditioning.length_layout(3, 7)
  np.testing.assert_array_equal(known, [BOS, PAD, PAD, PAD, EOS, PAD, PAD])
  np.testing.assert_array_equal(mask, [1, 0, 0, 0, 1, 1, 1])
  with pytest.raises(ValueError, match="needs 8"):
    conditioning.length_layout(6, 7)
  with pytest.raises(ValueError, match=">= 1"):
    conditioning.length_layout(0, 7)
  rows = _rows([4, 4, 4, 7, 2])  # 2, 2, 2, 5 and 0 pieces between BOS and EOS
  rows = np.concatenate([rows, np.full((1, 12), 9, np.int32)])  # cut at seq_len: no EOS
  rows[-1, 0] = BOS
  np.testing.assert_array_equal(encoding.piece_lengths(rows), [2, 2, 2, 5, 0, 11])
  drawn = encoding.draw_lengths(rows, 6000, seed=3)
  np.testing.assert_array_equal(drawn, encoding.draw_lengths(rows, 6000, seed=3))
  assert set(drawn) == {2, 5, 11}  # rows without pieces are never drawn
  np.testing.assert_allclose([np.mean(drawn == n) for n in (2, 5, 11)], [0.6, 0.2, 0.2],
                             atol=0.03)
  with pytest.raises(ValueError, match="No row"):
    encoding.draw_lengths(_rows([2, 2]), 3)


def test_mbr_keeps_the_consensus_candidate():
  assert mbr.mbr_select(["x y z", "a b c", "a b d", "a b c e"]) == 1
  assert mbr.mbr_select(["only"]) == 0


# An exact conditional denoiser: every sequence is all token 1 (embedding +c e_0) or all token 2
# (-c e_0), with probability 1/2 each; any known (non-null) position reveals which.
C = 2.0


@dataclasses.dataclass(frozen=True)
class _Cfg:
  seq_len: int = 6
  embed_dim: int = 2
  matmul_operand_dtype: object = None
  is_latent: bool = False
  source_context: bool = False
  latent_length: int = 6


class _ExactModel:
  config = _Cfg()
  table = jnp.array([[0.0, C], [C, 0.0], [-C, 0.0], [0.0, -C]])

  def apply(self, params, *args, method, cond=None, cond_mask=None):
    del params
    if method == "readout_weights":
      return self.table, jnp.zeros(4)
    if method == "embed":
      return self.table[args[0]]
    x_t, log_snr, _ = args
    gamma = jnp.sqrt(jax.nn.sigmoid(log_snr))[:, None]  # [batch, 1]
    var = jax.nn.sigmoid(-log_snr)[:, None]
    known = jnp.zeros(x_t.shape[:2], bool) if cond_mask is None else cond_mask
    # log p(x_t | all 1) - log p(x_t | all 2) over the unknown positions: 2 gamma c x / var
    odds = jnp.sum(jnp.where(known, 0.0, 2 * gamma * C * x_t[..., 0] / var), axis=1)
    mean = jnp.tanh(odds / 2) * C  # E[x0[0]] = (p1 - p2) c
    if cond is not None:  # a non-null known latent decides it (its sign)
      revealed = jnp.sum(jnp.where(known, cond[..., 0], 0.0), axis=1)
      mean = jnp.where(revealed != 0, jnp.sign(revealed) * C, mean)
    x0 = jnp.stack([mean, jnp.zeros_like(mean)], -1)[:, None, :].repeat(x_t.shape[1], 1)
    if cond is not None:
      x0 = jnp.where(known[..., None], cond, x0)
    return type("Out", (), {"x0_hat": x0})()


def _exact_samples(config, known=None, mask=None, seed=0):
  fn = sampling.make_sample_fn(_ExactModel(), schedules.get_schedule("cosine"), parallel.make_mesh(4), config)
  args = () if known is None else (jnp.asarray(known), jnp.asarray(mask))
  return np.asarray(fn({}, jax.random.PRNGKey(seed), *args))


def test_conditional_sampling_with_the_exact_denoiser_reconstructs_the_sequence():
  config = sample_options.SampleConfig(num_samples=8, num_steps=20, sampler="ddpm", clamp="none")
  free = _exact_samples(config.replace(num_samples=32))
  assert set(map(tuple, free)) <= {(1,) * 6, (2,) * 6}  # whole sequences of one kind
  assert 6 <= (free[:, 0] == 1).sum() <= 26
  known = np.zeros((8, 6), np.int32)
  mask = np.zeros((8, 6), bool)
  known[:4, 3], known[4:, 0] = 2, 1   # half reveal token 2 at position 3, half token 1 at 0
  mask[:4, 3] = mask[4:, 0] = True
  out = _exact_samples(config, known, mask)
  np.testing.assert_array_equal(out[:4], 2)
  np.testing.assert_array_equal(out[4:], 1)
  # an inconsistent known token still comes out verbatim
  known[0, 3], mask[0, 3] = 3, True
  assert _exact_samples(config, known, mask)[0, 3] == 3


def test_guidance_combines_the_conditional_and_null_estimates():
  model = _ExactModel()
  known = jnp.array([[0, 0, 2, 0, 0, 0]] * 3)
  mask = known != 0
  x_t = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 2))
  t = jnp.array([0.2, 0.5, 0.9])
  schedule = schedules.get_schedule("cosine")
  sc = jnp.zeros_like(x_t)
  plain = sampling.make_denoise_fn(model, {}, schedule, (known, mask))(x_t, t, sc)
  zero_w = sampling.make_denoise_fn(model, {}, schedule, (known, mask), guidance_scale=0.0)(x_t, t, sc)
  np.testing.assert_array_equal(plain, zero_w)
  w = 1.5
  guided = np.asarray(sampling.make_denoise_fn(model, {}, schedule, (known, mask), guidance_scale=w)(x_t, t, sc),
                      np.float64)
  cond = np.asarray(model.table[known], np.float64)
  null = np.asarray(model.apply({}, x_t, schedule.log_snr(t), sc, method="denoise",
                                cond=jnp.zeros((3, 6, 2)), cond_mask=mask).x0_hat, np.float64)
  expected = null + (1 + w) * (np.asarray(plain, np.float64) - null)
  expected[np.asarray(mask)] = cond[np.asarray(mask)]
  np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="needs a condition"):
    sampling.make_denoise_fn(model, {}, schedule, None, guidance_scale=1.0)


def test_generator_keeps_prompts_verbatim(trained):
  workdir, _ = trained
  g = cdm_jax.load(str(workdir))
  opts = {"steps": 3, "seed": 1}
  seq_len = g.config.data.seq_len
  known, mask = conditioning.prefix_layout(g.tokenizer, "the cat", seq_len)
  tokens = g.sample_tokens(4, condition=(np.stack([known] * 4), np.stack([mask] * 4)), **opts)
  np.testing.assert_array_equal(tokens[:, mask], np.stack([known[mask]] * 4))
  assert all(text.startswith("the cat") for text in g.sample(4, prefix="the cat", **opts))
  filled = g.infill("the ___:2 sat on a ___:1", 4, **opts)  # same shape: the same compiled fn
  template_ids = g.tokenizer.encode("the")
  assert all(text.startswith(g.tokenizer.decode(template_ids)) for text in filled)
  assert all(" sat on a " in f" {text} " or "sat on a" in text for text in filled), filled
  with pytest.raises(ValueError, match="shorten it"):
    g.sample(4, prefix=" ".join(["cat"] * seq_len), **opts)
  layouts = [conditioning.length_layout(n, seq_len) for n in (1, 2, 3, 5)]
  known, mask = np.stack([k for k, _ in layouts]), np.stack([m for _, m in layouts])
  tokens = g.sample_tokens(4, condition=(known, mask), **opts)
  np.testing.assert_array_equal(tokens[:, 0], BOS)
  np.testing.assert_array_equal(tokens[np.arange(4), [2, 3, 4, 6]], EOS)
  assert len(g.sample(4, lengths=[1, 2, 3, 5], **opts)) == 4
  for lengths, match in [([1, 2], "2 entries for 4"), ([1, 2, 3, 0], ">= 1"),
                         ([1, 2, 3, seq_len], "shorten it")]:
    with pytest.raises(ValueError, match=match):
      g.sample(4, lengths=lengths, **opts)
  with pytest.raises(ValueError, match="does not combine"):
    g.sample(4, lengths=[1, 2, 3, 5], prefix="the", **opts)


def test_classifier_guidance_with_exact_parts_samples_the_conditional():
  """Two-point data per position (+c w.p. 0.8, -c w.p. 0.2) and a noisy label y with p(y | x0) =
  0.9 when position 0 is -c, 0.3 when it is +c; exactly, log p(y | x_t) = log(0.9 P(-c | x_t) +
  0.3 P(+c | x_t)). Exact denoiser + exact classifier + the Tweedie shift at scale 1 sample
  p(x0 | y): position 0 is -c with probability 0.18 / (0.18 + 0.24) = 3/7, the others keep 0.8."""
  from test_samplers import CENTRE, P_PLUS, two_point_denoiser  # pylint: disable=g-import-not-at-top
  from cdm_jax.core import guidance  # pylint: disable=g-import-not-at-top
  sched = schedules.get_schedule("cosine")
  centre = jnp.asarray(CENTRE, jnp.float32)
  q_minus, q_plus = 0.9, 0.3

  def log_prob(x_t, t):
    g, s = sched.alpha_sigma(t)
    odds = np.log(P_PLUS / (1 - P_PLUS)) + 2.0 * g * (x_t[:, 0] @ centre) / s**2
    return jnp.log(q_minus * jax.nn.sigmoid(-odds) + q_plus * jax.nn.sigmoid(odds))

  shape = (4000, 2, 3)
  x_init = jax.random.normal(jax.random.PRNGKey(0), shape)
  plain = two_point_denoiser(sched)
  posterior = (1 - P_PLUS) * q_minus / ((1 - P_PLUS) * q_minus + P_PLUS * q_plus)
  for scale, expected_minus in [(0.0, 1 - P_PLUS), (1.0, posterior)]:
    guided = guidance.classifier_guided(plain, log_prob, sched, scale)
    out = samplers.sample_loop(guided, x_init, jax.random.PRNGKey(1), sched, 200, sampler="ddpm")
    first = np.asarray(out[:, 0] @ centre) / float(centre @ centre)
    assert np.mean(first < 0) == pytest.approx(expected_minus, abs=0.025), scale  # 3 std
    rest = np.asarray(out[:, 1:] @ centre) / float(centre @ centre)
    assert np.mean(rest > 0) == pytest.approx(P_PLUS, abs=0.025)
    np.testing.assert_allclose(np.abs(rest), 1.0, atol=0.05)  # samples sit on the two points


def test_a_gradient_step_on_a_toy_classifier_raises_its_log_probability():
  from cdm_jax.core import guidance  # pylint: disable=g-import-not-at-top
  sched = schedules.get_schedule("cosine")
  w = jax.random.normal(jax.random.PRNGKey(2), (6, 2, 3))  # logistic classifier over 3 labels

  def log_prob(x, t):
    del t
    return jax.nn.log_softmax(jnp.einsum("bld,ldk->bk", x, w), axis=-1)[:, 1]

  x = jax.random.normal(jax.random.PRNGKey(3), (5, 6, 2))
  t = jnp.full((5,), 0.5)
  zero = lambda x_t, t, sc: jnp.zeros_like(x_t)
  gamma, sigma = (float(v[0]) for v in sched.alpha_sigma(t))
  values = [log_prob(x, t)]
  for _ in range(5):  # x <- x + gamma * shift: gradient ascent with step sigma^2 * 0.1
    x = x + gamma * guidance.classifier_guided(zero, log_prob, sched, 0.1)(x, t, None)
    values.append(log_prob(x, t))
  assert all(bool(jnp.all(b > a)) for a, b in zip(values, values[1:]))
  log_snr = float(sched.log_snr(t)[0])  # outside the guidance window nothing moves
  outside = guidance.classifier_guided(zero, log_prob, sched, 0.1, min_log_snr=log_snr + 1.0)
  inside = guidance.classifier_guided(zero, log_prob, sched, 0.1, min_log_snr=log_snr - 1.0)
  assert not jnp.any(outside(x, t, None)) and jnp.any(inside(x, t, None))


def _np_real_token_log_prob(x0, table, bias, gap, special):
  """float64: per sample, the sum over gap positions of log(1 - P(special)) under softmax(x0 E^T
  + b), and its gradient with respect to x0."""
  logits = x0 @ table.T + bias
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  in_s = np.isin(np.arange(table.shape[0]), special)
  p_s = p[..., in_s].sum(-1)
  value = np.sum(np.log1p(-p_s) * gap, axis=-1)
  d_logits = -p * (in_s - p_s[..., None]) / (1 - p_s[..., None])  # d log(1 - P_s) / d logits
  return value, (d_logits @ table) * gap[..., None]


def test_readout_guidance_shifts_by_the_gradient_through_the_denoiser():
  from cdm_jax.core import guidance  # pylint: disable=g-import-not-at-top
  sched = schedules.get_schedule("cosine")
  rng = np.random.default_rng(4)
  table, bias = rng.normal(size=(7, 4)), rng.normal(size=7)
  special, gap = [0, 2], np.array([False, True, True, False, True])
  x, selfcond = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
  readout = lambda x0: x0 @ jnp.asarray(table, jnp.float32).T + jnp.asarray(bias, jnp.float32)
  objective = guidance.real_token_log_prob(readout, jnp.asarray(gap), special)
  denoise = lambda x_t, t, sc: 0.7 * x_t + 0.1 * sc  # a linear toy denoiser
  t = jnp.full((3,), 0.6)
  guided = guidance.readout_guided(denoise, objective, sched, 2.0)
  out = np.asarray(guided(jnp.asarray(x, jnp.float32), t, jnp.asarray(selfcond, jnp.float32)))
  x0 = 0.7 * x + 0.1 * selfcond
  value, grad_x0 = _np_real_token_log_prob(x0, table, bias, gap, special)
  np.testing.assert_allclose(np.asarray(objective(jnp.asarray(x0, jnp.float32))), value, rtol=1e-5)
  gamma, sigma = (float(v[0]) for v in sched.alpha_sigma(t))
  np.testing.assert_allclose(out, x0 + 2.0 * sigma**2 / gamma * 0.7 * grad_x0, rtol=1e-4, atol=1e-5)
  # Repeated small steps raise the objective; outside the window nothing moves.
  values, x_t = [value], x
  for _ in range(4):
    x_t = x_t + 0.05 * (np.asarray(guided(jnp.asarray(x_t, jnp.float32), t, 0 * x)) - 0.7 * x_t)
    values.append(_np_real_token_log_prob(0.7 * x_t, table, bias, gap, special)[0])
  assert all(np.all(b > a) for a, b in zip(values, values[1:]))
  log_snr = float(sched.log_snr(t)[0])
  outside = guidance.readout_guided(denoise, objective, sched, 2.0, min_log_snr=log_snr + 1.0)
  np.testing.assert_array_equal(outside(jnp.asarray(x, jnp.float32), t, 0 * x), 0.7 * x.astype(np.float32))


def test_a_guide_steers_a_conditional_sample_and_keeps_its_known_pieces(trained):
  from cdm_jax.core import guidance  # pylint: disable=g-import-not-at-top
  g = cdm_jax.load(str(trained[0]))
  seq_len = g.config.data.seq_len
  known, mask = conditioning.template_layout(g.tokenizer, "the ___:6 cat", seq_len)
  condition = (np.stack([known] * 8), np.stack([mask] * 8))
  readout = lambda x0: g.model.apply(g.params, x0, method="readout")
  plain = g.sample_tokens(8, seed=2, steps=10, condition=condition)
  # The tiny model fills the gap mostly with one piece; steer away from it (as length control
  # steers away from PAD/EOS).
  pieces, counts = np.unique(plain[:, ~mask], return_counts=True)
  avoid = [int(pieces[np.argmax(counts)])]
  objective = guidance.real_token_log_prob(readout, jnp.asarray(~mask), avoid)
  guide = lambda scale: (lambda f: guidance.readout_guided(f, objective, g.schedule, scale))
  np.testing.assert_array_equal(g.sample_tokens(8, seed=2, steps=10, condition=condition,
                                                guide=guide(0.0)), plain)
  steered = g.sample_tokens(8, seed=2, steps=10, condition=condition, guide=guide(20.0))
  np.testing.assert_array_equal(steered[:, mask], plain[:, mask])
  share = lambda rows: np.isin(rows[:, ~mask], avoid).mean()
  assert share(plain) > 0.5 and share(steered) < 0.5 * share(plain), (share(steered), share(plain))


def test_the_noisy_classifier_learns_labels_and_can_be_trained_on_estimates_instead(trained):
  """Rows of one repeated piece per label: learnable from x_t; an `estimate_fn` that returns
  zeros leaves nothing to learn (loss stays at log 2), so the classifier sees its output."""
  from cdm_jax.posttrain import classifier  # pylint: disable=g-import-not-at-top
  g = cdm_jax.load(str(trained[0]))
  labels = np.arange(64) % 2
  rows = np.full((64, g.config.data.seq_len), tokenizer_lib.PAD_ID, np.int32)
  rows[:, 0], rows[:, 1:6] = tokenizer_lib.BOS_ID, np.where(labels, 7, 8)[:, None]
  config = classifier.ClassifierConfig(width=32, num_layers=1, mlp_dim=64, steps=200,
                                     learning_rate=3e-3)
  seen = []

  def blind(x_t, t):
    seen.append((x_t.shape, t.shape))
    return jnp.zeros_like(x_t)
  final_loss = lambda **kw: classifier.train_noisy_classifier(
      g.model, g.params, g.schedule, rows, labels, num_labels=2, config=config,
      **kw)[2]["losses_every_100"][-1]
  assert final_loss() < 0.5
  assert final_loss(estimate_fn=blind) == pytest.approx(np.log(2), abs=0.03)
  assert seen[0] == ((64, g.config.data.seq_len, g.config.model.embed_dim), (64,))


def test_generate_cli_flags_map_to_the_conditional_calls(trained):
  import types  # pylint: disable=g-import-not-at-top
  from cdm_jax.cli import generate as generate_cli  # pylint: disable=g-import-not-at-top
  g = cdm_jax.load(str(trained[0]))
  flags = dict(num_samples=4, seed=1, steps=3, sampler=None, clamp=None, decoder=None, source=None,
               template=None, prefix=None, suffix=None, gap_length=None, guidance_scale=None, mbr=1,
               temperature=None)
  cli = lambda **kw: generate_cli._cli_samples(g, types.SimpleNamespace(**{**flags, **kw}))  # pylint: disable=protected-access
  assert cli(template="the ___:2 sat") == g.infill("the ___:2 sat", 4, seed=1, steps=3)
  assert cli(prefix="the cat") == g.sample(4, seed=1, steps=3, prefix="the cat")
  assert cli(source=["the cat", "a dog"]) == g.generate(["the cat", "a dog"], seed=1, steps=3)
  with pytest.raises(ValueError, match="predicts logits"):  # --temperature reaches the sampler
    cli(temperature=0.5)
  with pytest.raises(ValueError, match="one of --source, --template"):
    cli(template="the ___", prefix="a")


@pytest.mark.slow
def test_logit_temperature_reweights_the_expected_embedding():
  """x0_hat = softmax(logits / tau) E in float64, with and without a condition; tau = 1 is the
  model's own x0_hat; models that do not predict logits refuse a temperature."""
  from cdm_jax.models import DiffusionLM, ModelConfig
  cfg = ModelConfig(vocab_size=13, seq_len=5, embed_dim=4, width=16, num_layers=1, num_heads=2,
                    mlp_dim=32, output="logits_prior", normalize_embeddings=True, conditioning=True)
  model = DiffusionLM(cfg)
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((2, 5), jnp.int32), jnp.zeros(2))
  schedule = schedules.get_schedule("cosine")
  x_t = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4))
  t, sc = jnp.array([0.3, 0.7]), jnp.zeros_like(x_t)
  out = model.apply(params, x_t, schedule.log_snr(t), sc, method="denoise")
  table = np.asarray(model.apply(params, method="embeddings"), np.float64)
  logits = np.asarray(out.logits, np.float64) / 0.5
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  expected = (probs / probs.sum(-1, keepdims=True)) @ table
  got = sampling.make_denoise_fn(model, params, schedule, logit_temperature=0.5)(x_t, t, sc)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  same = sampling.make_denoise_fn(model, params, schedule, logit_temperature=1.0)(x_t, t, sc)
  np.testing.assert_array_equal(same, out.x0_hat)
  known = jnp.array([[3, 0, 0, 0, 0]] * 2)
  cond_got = sampling.make_denoise_fn(model, params, schedule, (known, known != 0),
                                      logit_temperature=0.5)(x_t, t, sc)
  np.testing.assert_allclose(cond_got[:, 0], np.broadcast_to(table[3], (2, 4)), rtol=1e-5, atol=1e-6)
  assert not np.allclose(cond_got[:, 1:], out.x0_hat[:, 1:], atol=1e-3)
  x0_model = DiffusionLM(dataclasses.replace(cfg, output="x0", normalize_embeddings=False))
  with pytest.raises(ValueError, match="predicts logits"):
    sampling.make_denoise_fn(x0_model, params, schedule, logit_temperature=0.5)
