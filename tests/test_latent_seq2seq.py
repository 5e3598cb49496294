"""Seq2seq in latent space (`model.source_context`): each `BOS source EOS target EOS` row is split
into a source row and a target row, the target's latents diffuse and the denoiser reads the
source's clean latents in context (null source for classifier-free guidance); token-level modes
stay refused."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, WORDS
from cdm_jax.core import conditioning, diffusion
from cdm_jax.core.tokens import BOS_ID, EOS_ID, PAD_ID
from cdm_jax.models import ModelConfig, builders
from cdm_jax.models.transformer import TransformerDenoiser
from cdm_jax.runtime import parallel
from cdm_jax.training import autoencoder as ae_stage
from cdm_jax.training import flops, steps
from cdm_jax.runtime import config_files


def _split_reference(row: list[int]) -> tuple[list[int], list[int]]:
  n = len(row)
  if EOS_ID not in row:
    return row, [BOS_ID] + [PAD_ID] * (n - 1)
  first = row.index(EOS_ID)
  source = row[:first + 1] + [PAD_ID] * (n - first - 1)
  target = [BOS_ID] + row[first + 1:]
  return source, target + [PAD_ID] * (n - len(target))


def test_pairs_split_like_a_python_reference_and_join_back():
  rng = np.random.default_rng(0)
  rows = []
  for _ in range(200):
    n_src, n_tgt = rng.integers(0, 6), rng.integers(0, 6)
    row = [BOS_ID] + list(rng.integers(4, 30, n_src)) + [EOS_ID] + list(rng.integers(4, 30, n_tgt))
    row = (row + [EOS_ID] + [PAD_ID] * 12)[:12]  # some targets are cut at n
    if rng.random() < 0.05:
      row = [BOS_ID] + list(rng.integers(4, 30, 11))  # no EOS at all
    rows.append([int(x) for x in row])
  source, target = conditioning.split_pairs(np.array(rows))
  for row, s, t in zip(rows, np.asarray(source), np.asarray(target)):
    ref_s, ref_t = _split_reference(row)
    assert s.tolist() == ref_s and t.tolist() == ref_t, row
  joined = conditioning.join_pairs(source, target)
  np.testing.assert_array_equal(joined, np.array(rows))
  layout = conditioning.source_layout(_Pieces(), "c a t", 12)
  assert conditioning.is_source_layout(*layout)
  assert not conditioning.is_source_layout(*conditioning.prefix_layout(_Pieces(), "c a t", 12))
  assert not conditioning.is_source_layout(*conditioning.length_layout(3, 12))


class _Pieces:
  """A tokenizer stand-in: one piece per letter."""

  def encode(self, text):
    return [4 + ord(c) - ord("a") for c in text.split()]


def test_source_in_context_trains_on_targets_and_nulls_unknown_or_dropped_sources():
  rows = jnp.array([[BOS_ID, 5, EOS_ID, 7, 8, EOS_ID, PAD_ID, PAD_ID]] * 3)
  known = jnp.array([[True, True, True, False, False, False, False, False],
                     [False] * 8,  # drawn "none": the null source
                     [True, True, True, False, False, False, False, False]])
  inputs = diffusion.LossInputs(tokens=rows, mask=rows != PAD_ID, t=jnp.zeros(3),
                                weight=jnp.ones(3), noise=jnp.zeros((2, 3, 8, 1)),
                                self_cond=jnp.array(False), known=known,
                                null_cond=jnp.array([False, False, True]))  # dropped
  embed = lambda method, tokens: tokens[..., None].astype(jnp.float32) + 1.0  # never zero
  out, cond = diffusion.source_in_context(embed, inputs)
  np.testing.assert_array_equal(out.tokens[0], [BOS_ID, 7, 8, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID])
  np.testing.assert_array_equal(out.mask[0], [True] * 4 + [False] * 4)
  assert out.known is None and out.null_cond is None
  context = np.asarray(cond["context"])
  np.testing.assert_array_equal(context[0, :, 0], np.array([BOS_ID, 5, EOS_ID] + [PAD_ID] * 5) + 1.0)
  assert not context[1:].any()


def _denoiser(source_context=True):
  cfg = ModelConfig(vocab_size=40, seq_len=4, encoder="latent", embed_dim=8, width=32,
                    num_layers=2, num_heads=2, mlp_dim=64, source_context=source_context,
                    pos_init_std=1.0)
  model = TransformerDenoiser(cfg, out_dim=8)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 8))
  params = model.init(jax.random.PRNGKey(1), x, jnp.zeros((3,)))
  return model, params, x


def test_the_denoiser_reads_a_source_in_context_and_outputs_the_targets_positions():
  model, params, x = _denoiser()
  assert {"context_proj", "context_pos_embedding"} <= set(params["params"])
  log_snr = jnp.zeros((3,))
  context = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 8))
  out = model.apply(params, x, log_snr, context=context)
  assert out.shape == x.shape
  other = model.apply(params, x, log_snr, context=context[::-1])
  assert np.abs(np.asarray(out - other))[0].max() > 1e-3  # another source, another estimate
  null = model.apply(params, x, log_snr)
  np.testing.assert_allclose(null, model.apply(params, x, log_snr, context=jnp.zeros_like(x)),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="source_context"):
    ModelConfig(encoder="embedding", source_context=True)


def test_a_latent_config_reads_sources_or_known_positions_not_both(corpus):
  config = _config(corpus)
  assert builders.model_config(config).source_context
  assert builders.model_config(config).context_layout == "pairs"
  assert builders.loss_config(config).condition.source == 0.9
  for kind in ("prefix", "suffix", "spans"):
    bad = _config(corpus)
    bad.condition[kind] = 0.05
    with pytest.raises(ValueError, match="not both") as info:
      builders.loss_config(bad)
    assert "\n" not in str(info.value)
    positions = _config(corpus)
    positions.condition.update(source=0.0, **{kind: 0.05})
    assert builders.model_config(positions).context_layout == "positions"
  unconditional = _config(corpus)
  unconditional.condition.update(source=0.0)
  assert not builders.model_config(unconditional).source_context


def _config(corpus_path, **train):
  config = config_files.load(str(ROOT / "configs/tiny_latent.py"))
  config.data.update(corpus="jsonl", path=str(corpus_path), source_field="src",
                     target_field="tgt", vocab_size=36, seq_len=32)
  config.model.latent_ratio = 4
  config.condition.update(source=0.9, dropout=0.1)
  config.train.update(**train)
  return config


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
  """JSONL pairs whose target is the source's words reversed."""
  rng = np.random.default_rng(0)
  lines = []
  for _ in range(400):
    words = list(rng.choice(WORDS, rng.integers(1, 4)))
    lines.append(json.dumps({"src": " ".join(words), "tgt": " ".join(words[::-1])}))
  path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
  path.write_text("\n".join(lines))
  return path


@pytest.fixture(scope="module")
def workdir(pairs, tmp_path_factory):
  from cdm_jax.training import train
  workdir = tmp_path_factory.mktemp("latent_seq2seq")
  config = _config(pairs, num_train_steps=300, learning_rate=3e-3, eval_every_steps=300,
                   sample_every_steps=0, checkpoint_every_steps=300)
  metrics = train.train_and_evaluate(config, str(workdir))
  return workdir, metrics


@pytest.mark.slow
def test_the_autoencoder_learns_both_halves_and_the_denoiser_reads_its_source(workdir, pairs):
  import cdm_jax
  from cdm_jax.data import pipeline
  path, metrics = workdir
  assert metrics["step"] == 300 and math.isfinite(metrics["valid_bound_bits"])
  generator = cdm_jax.load(str(path))
  data = pipeline.prepare_data(generator.config.data, str(path))
  halves = ae_stage.autoencoder_data(generator.config, data)
  assert len(halves.train) == 2 * len(data.train)
  assert np.all(halves.train[:, 0] == BOS_ID) and np.sum(halves.train == EOS_ID) == np.sum(
      data.train == EOS_ID)
  report = json.loads((path / "autoencoder/final/autoencoder.json").read_text())
  assert report["valid"]["token_accuracy"] >= 0.95, report
  # At log-SNR 0 the target's estimate is better with its own source than with another row's.
  rows = jnp.asarray(data.train[:64])
  source, target = conditioning.split_pairs(rows)
  apply = lambda *args, **kw: generator.model.apply(generator.params, *args, **kw)
  x0 = apply(target, method="embed")
  x_t = (x0 + jax.random.normal(jax.random.PRNGKey(0), x0.shape)) / math.sqrt(2.0)
  context = apply(source, method="embed")
  error = lambda ctx: float(jnp.mean(jnp.square(
      apply(x_t, jnp.zeros((64,)), context=ctx, method="denoise").x0_hat - x0)))
  own, foreign = error(context), error(jnp.roll(context, 1, axis=0))
  assert own < 0.8 * foreign, (own, foreign)


@pytest.mark.slow
def test_generate_puts_targets_after_their_sources_and_guidance_runs(workdir):
  import cdm_jax
  generator = cdm_jax.load(str(workdir[0]))
  sources = ["cat dog", "tree"]
  layouts = [conditioning.source_layout(generator.tokenizer, s, 32) for s in sources]
  known = np.stack([row for row, _ in layouts])
  mask = np.stack([m for _, m in layouts])
  tokens = generator.sample_tokens(2, seed=3, condition=(known, mask), num_steps=10)
  np.testing.assert_array_equal(np.where(mask, tokens, PAD_ID), known)
  targets = [conditioning.target_tokens(row) for row in tokens]
  assert generator.generate(sources, seed=3, num_steps=10) == generator.decode(targets)
  guided = generator.generate(sources, seed=3, num_steps=10, guidance_scale=2.0)
  assert guided == generator.generate(sources, seed=3, num_steps=10, guidance_scale=2.0)
  assert len(generator.sample(3, seed=0, num_steps=5)) == 3  # the null source: target language
  calls = [lambda: generator.sample(2, prefix="the cat"), lambda: generator.infill("the ___ sat", 2),
           lambda: generator.sample(2, lengths=[3, 4]), lambda: generator.sample(2, suffix="mat")]
  for call in calls:
    with pytest.raises(ValueError, match="takes sources only") as info:
      call()
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_the_seq2seq_task_and_its_flop_matched_baseline_count_the_autoencoder(workdir):
  import cdm_jax
  from cdm_jax.data import pipeline
  from cdm_jax.evaluation import tasks
  generator = cdm_jax.load(str(workdir[0]))
  config = generator.config
  data = pipeline.prepare_data(config.data, str(workdir[0]))
  result = tasks.evaluate_seq2seq(generator, data, num_examples=8, k=2, seed=0, baseline=False,
                                  sample_overrides={"num_steps": 5})
  assert result["diffusion"]["examples"] == 8 and 0 <= result["diffusion"]["accuracy_at_2"] <= 1
  budget = tasks.matched_ar_budget(config, 600).max_steps
  m = config.model
  ar_step = flops.ar_train_flops(width=m.width, num_layers=m.num_layers, mlp_dim=m.mlp_dim,
                                 seq_len=32, vocab_size=36, batch_size=config.train.batch_size)
  expected = (600 * flops.diffusion_train_flops(config)["train"]
              + ae_stage.autoencoder_flops(config)) / ar_step
  assert budget == round(expected) and ae_stage.autoencoder_flops(config) > 0


@pytest.mark.slow
def test_a_source_context_train_step_matches_its_analytic_flops(pairs):
  """The denoiser over [source; target] latents and both encodes, against XLA's count."""
  config = _config(pairs)
  config.data.update(vocab_size=256, seq_len=64)
  config.model.update(embed_dim=32, width=128, num_layers=2, num_heads=4, mlp_dim=512,
                      self_conditioning=False)
  config.autoencoder.update(width=128, mlp_dim=512)
  config.train.batch_size = 8
  model, tx = builders.make_model(config), builders.make_model_optimizer(config)
  step = steps.make_train_step(model, tx, builders.make_schedule(config),
                               builders.loss_config(config), parallel.make_mesh(1),
                               global_batch=8, ema_decay=0.999)
  state = builders.init_state(config, model, tx)
  tokens = jnp.zeros((8, 64), jnp.int32)
  cost = step.lower(state, tokens, tokens == 0).compile().cost_analysis()
  xla = float((cost[0] if isinstance(cost, list) else cost)["flops"])
  analytic = flops.diffusion_train_flops(config)
  expected = analytic["train"] + analytic["metric_readout"]  # the accuracy metric decodes too
  assert xla == pytest.approx(expected, rel=0.1), (xla, expected)


@pytest.mark.slow
def test_a_source_context_model_distils(workdir, tmp_path):
  import shutil
  import cdm_jax
  from cdm_jax.posttrain import distill
  path = tmp_path / "run"
  shutil.copytree(workdir[0], path)
  record = distill.distill(str(path), distill.DistillConfig(
      target_steps=2, teacher_steps=4, steps_per_round=6, learning_rate=3e-4,
      checkpoint_every_steps=6, log_every_steps=3))
  assert record["step"] == 6 and math.isfinite(record["loss"])
  student = cdm_jax.load(str(path), student=2)
  assert len(student.generate(["cat dog"], seed=0)) == 1
  # The teacher's runs and the student read each row's source: other sources, other losses.
  from cdm_jax.core.conditioning import ConditionConfig
  from cdm_jax.data import pipeline
  from cdm_jax.posttrain import distill_step
  teacher = cdm_jax.load(str(workdir[0]))
  rows = pipeline.prepare_data(teacher.config.data, str(workdir[0])).train[:16]
  source, target = conditioning.split_pairs(rows)
  swapped = conditioning.join_pairs(jnp.roll(source, 1, axis=0), target)
  loss = lambda tokens: float(distill_step.distillation_losses(
      teacher.model, student.params, teacher.params, tokens, jnp.array([0.9, 0.6, 0.3]),
      key=jax.random.PRNGKey(0), schedule=teacher.schedule,
      condition=ConditionConfig(source=1.0))[0])
  assert abs(loss(rows) - loss(swapped)) > 1e-4 * loss(rows)


def test_sampled_targets_come_out_after_their_sources():
  """What the sampler returns: a source_context model's target rows joined after the known
  `BOS source EOS`; known positions of other models kept in place."""
  from cdm_jax.sampling import sample_fn
  known = jnp.array([[BOS_ID, 5, 6, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
  mask = jnp.arange(8)[None] <= 3
  targets = jnp.array([[BOS_ID, 9, 10, EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]])
  latent = sample_fn._with_condition(ModelConfig(encoder="latent", source_context=True),
                                     targets, (known, mask))
  np.testing.assert_array_equal(latent, [[BOS_ID, 5, 6, EOS_ID, 9, 10, EOS_ID, PAD_ID]])
  tokens = jnp.array([[7, 8, 9, 10, 11, 12, 13, 14]])
  plain = sample_fn._with_condition(ModelConfig(), tokens, (known, mask))
  np.testing.assert_array_equal(plain, [[BOS_ID, 5, 6, EOS_ID, 11, 12, 13, 14]])


@pytest.mark.slow  # compiles a sampler (~30 s on two cores)
def test_the_low_level_sample_function_refuses_what_a_source_context_model_cannot_take():
  """`make_sample_fn` of a source-context model takes source layouts (`BOS source EOS` known) and
  refuses a prefix layout with the one latent-condition message, where it used to return the
  prefix around PAD; `lower` still passes through to the jitted function."""
  from cdm_jax.core import sample_options  # pylint: disable=g-import-not-at-top
  from cdm_jax.sampling import make_sample_fn  # pylint: disable=g-import-not-at-top
  config = _config("unused.jsonl")
  model = builders.make_model(config)
  assert model.config.source_context
  params = builders.init_params(config, model)
  fn = make_sample_fn(model, builders.make_schedule(config), parallel.make_mesh(1),
                      sample_options.SampleConfig(num_samples=2, num_steps=2, clamp="none"))
  rows = np.full((2, 32), PAD_ID, np.int32)
  rows[:, :4] = [BOS_ID, 7, 8, EOS_ID]
  source_mask = np.arange(32)[None, :] <= 3
  tokens = np.asarray(fn(params, jax.random.PRNGKey(0), rows, np.repeat(source_mask, 2, 0)))
  assert tokens.shape == (2, 32) and (tokens[:, :4] == rows[:, :4]).all()
  prefix_mask = np.repeat(np.arange(32)[None, :] <= 2, 2, 0)  # BOS 7 8 known, no EOS: a prefix
  with pytest.raises(ValueError, match="takes sources only") as info:
    fn(params, jax.random.PRNGKey(0), rows, prefix_mask)
  assert "\n" not in str(info.value)
  assert fn.lower(params, jax.random.PRNGKey(0)).compile() is not None
