"""cdm_jax.evaluation.compute_gap's matching of the diffusion samples' perplexity on the AR ladder."""

import math
import pytest

from cdm_jax.evaluation.compute_gap import compute_gap, equal_word_entropies
from cdm_jax.runtime import overrides as overrides_lib

LADDER = [{"flops": 1e12, "judge_ppl": 400.0, "unigram_entropy": 6.0},
          {"flops": 2e12, "judge_ppl": 200.0, "unigram_entropy": 6.2},
          {"flops": 4e12, "judge_ppl": 100.0, "unigram_entropy": 6.4}]


def test_gap_interpolates_in_log_budget_and_log_perplexity():
  # ppl 141.4 lies halfway between 200 and 100 in log space: budget sqrt(2e12 * 4e12).
  row = {"flops": 32e12, "judge_ppl": 100.0 * math.sqrt(2), "unigram_entropy": 6.3}
  gap = compute_gap(row, LADDER)
  assert gap["status"] == "matched"
  assert gap["compute_gap"] == pytest.approx(32e12 / math.sqrt(8e24))
  assert gap["ar_unigram_entropy_at_match"] == pytest.approx(6.3)
  assert gap["entropy_valid"]


def test_low_entropy_match_is_flagged_as_gamed():
  gap = compute_gap({"flops": 32e12, "judge_ppl": 150.0, "unigram_entropy": 6.1}, LADDER)
  assert gap["status"] == "matched" and not gap["entropy_valid"]


def test_outside_the_ladder_gives_bounds():
  behind = compute_gap({"flops": 64e12, "judge_ppl": 900.0, "unigram_entropy": 6.0}, LADDER)
  assert behind["compute_gap"] is None and behind["compute_gap_lower_bound"] == pytest.approx(64)
  assert behind["entropy_valid"]  # against the smallest rung's 6.0
  ahead = compute_gap({"flops": 2e12, "judge_ppl": 50.0, "unigram_entropy": 6.5}, LADDER)
  assert ahead["compute_gap"] is None and ahead["compute_gap_upper_bound"] == pytest.approx(0.5)
  assert ahead["entropy_valid"]
  # Ahead of the largest rung by repeating itself: the bound is gamed too.
  repetitive = compute_gap({"flops": 2e12, "judge_ppl": 50.0, "unigram_entropy": 4.2}, LADDER)
  assert not repetitive["entropy_valid"]


def test_the_rule_compares_the_entropy_key_it_is_given():
  row = {"flops": 32e12, "judge_ppl": 150.0, "unigram_entropy": 6.1, "equal": 6.5}
  ladder = [{**rung, "equal": rung["unigram_entropy"]} for rung in LADDER]
  assert not compute_gap(row, LADDER)["entropy_valid"]
  gap = compute_gap(row, ladder, "equal")
  assert gap["entropy_valid"] and gap["ar_unigram_entropy_at_match"] == pytest.approx(6.2 + 0.2 * (
      math.log(200 / 150) / math.log(2)))
  ladder[1]["equal"] = 7.0  # the key's values are interpolated, not "unigram_entropy"'s
  assert not compute_gap(row, ladder, "equal")["entropy_valid"]


def test_entropies_are_compared_at_the_shortest_sample_set_s_word_count():
  short = {"texts": ["a b", "c d"]}  # 4 distinct words: log 4
  long = {"texts": [" ".join(f"w{i}" for i in range(20))]}  # any 4 of 20 distinct words: log 4
  assert equal_word_entropies([short, long]) == 4
  assert short["unigram_entropy_equal_words"] == pytest.approx(math.log(4))
  assert long["unigram_entropy_equal_words"] == pytest.approx(math.log(4))
  assert "texts" not in short and "texts" not in long


def test_sampling_overrides_take_the_field_types_and_refuse_unknown_fields():
  from cdm_jax.core import sample_options
  sample_overrides = overrides_lib.dataclass_overrides
  overrides = sample_overrides(sample_options.SampleConfig(), ["sampler=renoise", "num_steps=7",
                                                         "clamp_temperature=0.5"])
  assert overrides == {"sampler": "renoise", "num_steps": 7, "clamp_temperature": 0.5}
  assert isinstance(overrides["num_steps"], int)
  sample_options.SampleConfig().replace(**overrides)  # valid as a whole
  with pytest.raises(ValueError, match="expected FIELD=VALUE"):
    sample_overrides(sample_options.SampleConfig(), ["steps7"])
  with pytest.raises(ValueError, match="Unknown field 'temperature'; fields: .*logit_temperature"):
    sample_overrides(sample_options.SampleConfig(), ["temperature=2"])


def test_config_overrides_set_dotted_keys_and_name_an_unknown_one():
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"model": {"width": 32, "output": "x0"}})
  parsed = overrides_lib.parse_settings(["model.width=64", "model.output=logits"])
  assert parsed == {"model.width": 64, "model.output": "logits"}
  overrides_lib.apply_to_config(config, parsed)
  assert config.model.width == 64 and config.model.output == "logits"
  with pytest.raises(KeyError, match="model.depth"):
    overrides_lib.apply_to_config(config, {"model.depth": 3})
  with pytest.raises(KeyError, match="no 'modle'"):
    overrides_lib.apply_to_config(config, {"modle.width": 3})
