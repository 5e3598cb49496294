"""The Generator's sampling API: one name per option (typos answered with the valid names), batches
that bound memory and give the same rows, power-of-two buckets that bound compilations, and compile
caches that live and die with their Generator (guided ones bounded in number)."""

import gc
import warnings
import weakref

import numpy as np
import pytest

import cdm_jax
from cdm_jax.core import conditioning

pytestmark = pytest.mark.slow  # reads the shared trained workdir


def test_a_misspelt_option_names_the_valid_ones(trained):
  g = cdm_jax.load(str(trained[0]))
  with pytest.raises(ValueError, match=r"'num_step' \(did you mean 'num_steps'\?\).*sampler"):
    g.sample(2, num_step=3)
  with pytest.raises(ValueError, match="Unknown sampling option 'colour'"):
    g.options(colour="red")


def test_old_aliases_warn_and_mean_the_same(trained):
  g = cdm_jax.load(str(trained[0]))
  with pytest.warns(DeprecationWarning, match="steps= is deprecated; use num_steps="):
    old = g.options(steps=3, temperature=0.9)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert g.options(num_steps=3, logit_temperature=0.9) == old


def test_batches_give_the_same_rows_and_buckets_bound_compilations(trained):
  g = cdm_jax.load(str(trained[0]))
  whole = g.sample_tokens(7, seed=3, num_steps=3, batch_size=64)
  assert g.num_compiled == 1  # 7 samples: one bucket of 8
  split = g.sample_tokens(7, seed=3, num_steps=3, batch_size=3)  # 3 + 3 + 1 rows: buckets 3, 1
  np.testing.assert_array_equal(whole, split)
  np.testing.assert_array_equal(g.sample_tokens(1, seed=3, num_steps=3), whole[:1])
  before = g.num_compiled
  for n in (5, 6, 8):  # all in the bucket of 8, compiled above
    assert g.sample_tokens(n, seed=3, num_steps=3).shape == (n, g.config.data.seq_len)
  assert g.num_compiled == before
  with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
    g.sample_tokens(2, batch_size=0)


def test_conditional_batches_keep_each_rows_condition(trained):
  g = cdm_jax.load(str(trained[0]))
  texts = ["the cat", "a dog", "the bird", "red"]
  layouts = [conditioning.prefix_layout(g.tokenizer, t, g.config.data.seq_len) for t in texts]
  known = np.stack([k for k, _ in layouts])
  mask = np.stack([m for _, m in layouts])
  whole = g.sample_tokens(4, seed=1, num_steps=3, condition=(known, mask))
  split = g.sample_tokens(4, seed=1, num_steps=3, condition=(known, mask), batch_size=3)
  np.testing.assert_array_equal(whole, split)
  for row, text in zip(g.decode(split), texts):
    assert row.startswith(text), (row, text)


def test_guided_functions_are_reused_and_the_cache_does_not_keep_a_generator_alive(trained):
  from cdm_jax.sampling import generator as generator_lib  # pylint: disable=g-import-not-at-top
  g = cdm_jax.load(str(trained[0]))
  guide = lambda denoise_fn: denoise_fn  # the identity guide
  first = g.sample_guided(2, guide, num_steps=2)
  assert g.sample_guided(2, guide, num_steps=2) == first and g.num_compiled == 1  # reused
  assert first == g.sample(2, num_steps=2)  # the identity guide changes nothing
  for _ in range(generator_lib.MAX_GUIDED + 2):  # new guides: the oldest entries are dropped
    g._compiled(g.options(num_steps=2), lambda f: f)  # pylint: disable=protected-access
  assert g.num_compiled == 1 + generator_lib.MAX_GUIDED
  generator_ref = weakref.ref(g)
  del g
  gc.collect()
  assert generator_ref() is None
