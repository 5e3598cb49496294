"""The AR model's key/value-cached decoding: the same logits as a full forward pass at every
position, and the same samples as uncached sampling for the same key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm_jax.data import tokenizer as tokenizer_lib
from cdm_jax.evaluation import ar_model
from cdm_jax.models import ModelConfig, TransformerLM
from cdm_jax.models.transformer import TransformerLMStep


def _model(seq_len=12):
  config = ModelConfig(vocab_size=40, seq_len=seq_len, width=32, num_layers=2, num_heads=4,
                       mlp_dim=64)
  model = TransformerLM(config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, seq_len), jnp.int32))
  # Larger weights than the initialisation's, so that positions really differ in their logits.
  params = jax.tree.map(lambda p: p * 8.0 if p.ndim > 1 else p, params)
  return model, params


def test_cached_steps_give_the_full_forward_logits_at_every_position():
  model, params = _model()
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 4, 40)
  full = jax.jit(model.apply)(params, tokens)  # [batch, length, vocab]
  step = TransformerLMStep(model.config)
  step_fn = jax.jit(step.apply)  # one compilation: the position is traced
  caches = step.empty_caches(3)
  for i in range(12):
    logits, caches = step_fn(params, tokens[:, i], jnp.int32(i), caches)
    np.testing.assert_allclose(logits, full[:, i], rtol=2e-5, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.9)])
def test_cached_and_uncached_sampling_draw_the_same_tokens(temperature, top_p):
  model, params = _model()
  lm = ar_model.Judge(model=model, params=params, info={})
  prompts = np.zeros((5, 12), np.int32)
  prompts[:, 0] = tokenizer_lib.BOS_ID
  prompts[:2, 1:3] = [[7, 8], [9, 10]]  # two rows continue a prompt, three start fresh
  kwargs = dict(seed=3, temperature=temperature, top_p=top_p, batch_size=4, prompts=prompts)
  cached = lm.sample(5, cached=True, **kwargs)
  np.testing.assert_array_equal(cached, lm.sample(5, cached=False, **kwargs))
  assert (cached[:2, 1:3] == prompts[:2, 1:3]).all()
  assert (cached[:, 0] == tokenizer_lib.BOS_ID).all()
  assert len({tuple(row) for row in cached}) > 1  # not a constant sampler
