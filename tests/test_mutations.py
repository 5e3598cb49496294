"""The mutation check (`python tests/mutations.py`) stays runnable: every mutation's snippet occurs
exactly once in the file it names, its replacement differs, and the test meant to catch it exists.
(Running the mutants themselves takes minutes; that is the script's job.)"""

import pathlib
import re

import pytest

from conftest import ROOT
from mutations import MUTATIONS


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_mutation_targets_exist(mutation):
  source = (ROOT / mutation.file).read_text()
  assert source.count(mutation.old) == 1, (mutation.file, mutation.old)
  assert mutation.new != mutation.old
  test_file, test_name = mutation.test.split("::")
  test_source = (ROOT / test_file).read_text()
  assert re.search(rf"^def {re.escape(test_name.split('[')[0])}\(", test_source, re.M), mutation.test


def test_mutations_cover_distinct_behaviours():
  assert len({m.name for m in MUTATIONS}) == len(MUTATIONS) >= 10
  assert all(pathlib.Path(ROOT / m.file).suffix == ".py" for m in MUTATIONS)
