"""The analytic FLOPs that every compute comparison rests on (`training.flops`), against XLA's own
count of the compiled step (`cost_analysis()`): within 10% for matmul-dominated sizes. The analytic
count is matmuls only; XLA also counts elementwise work, and fuses or drops a little."""


import jax
import jax.numpy as jnp
import optax
import pytest

from cdm_jax.evaluation import ar_model
from cdm_jax.models import ModelConfig, TransformerLM, builders
from cdm_jax.runtime import parallel
from cdm_jax.training import flops, steps

from conftest import ROOT
from cdm_jax.runtime import config_files

pytestmark = pytest.mark.slow  # compiles whole train steps (XLA cost analysis)

TOLERANCE = 0.10


def _xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _config(output: str):
  config = config_files.load(str(ROOT / "configs/tiny.py"))
  config.data.update(vocab_size=256, seq_len=32)
  config.model.update(embed_dim=32, width=128, num_layers=2, num_heads=4, mlp_dim=512,
                      self_conditioning=False, output=output)
  config.diffusion.update(rounding_weight=0.0, anchor_weight=0.0)
  config.train.batch_size = 8
  return config


def test_the_diffusion_train_step_matches_xla():
  config = _config("logits")  # the denoiser and the vocabulary read-out
  model, tx = builders.make_model(config), builders.make_optimizer(config.train)
  step = steps.make_train_step(model, tx, builders.make_schedule(config),
                               builders.loss_config(config), parallel.make_mesh(1),
                               global_batch=8, ema_decay=0.999)
  state = builders.init_state(config, model, tx)
  tokens = jnp.zeros((8, 32), jnp.int32)
  xla = _xla_flops(step.lower(state, tokens, tokens == 0).compile())
  analytic = flops.diffusion_train_flops(config)
  expected = analytic["train"] + analytic["metric_readout"]  # the step also reads out for accuracy
  assert xla == pytest.approx(expected, rel=TOLERANCE), (xla, expected)


def test_the_ar_train_step_matches_xla():
  config = ModelConfig(vocab_size=256, seq_len=32, width=128, num_layers=2, num_heads=4,
                       mlp_dim=512)
  model = TransformerLM(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32), jnp.int32))
  tx = optax.adamw(1e-3)

  def step(params, opt_state, tokens):
    def loss_fn(p):
      nll, mask = ar_model.next_token_nll(model.apply(p, tokens), tokens)
      return jnp.sum(nll * mask) / jnp.sum(mask)
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  tokens = jnp.ones((8, 32), jnp.int32)
  xla = _xla_flops(jax.jit(step).lower(params, tx.init(params), tokens).compile())
  expected = flops.ar_train_flops(width=128, num_layers=2, mlp_dim=512, seq_len=32,
                                  vocab_size=256, batch_size=8)
  assert xla == pytest.approx(expected, rel=TOLERANCE), (xla, expected)
