"""Seq2seq on WordNet: the reverse dictionary (definition -> lemma); otherwise as
wordnet_definitions.py."""

import pathlib
import runpy


def get_config():
  sibling = pathlib.Path(__file__).with_name("wordnet_definitions.py")
  config = runpy.run_path(str(sibling))["get_config"]()
  config.data.corpus = "wordnet_reverse"
  return config
