#!/usr/bin/env bash
# Installs cdm_jax with its test extra into .venv and runs the test suite: the tests marked
# `serial` (several processes of their own, or wall-clock bounds) alone, the rest on two pytest
# workers. With arguments, runs just those (e.g. `bash scripts/test.sh tests/test_diffusion.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
.venv/bin/python -m pytest -q --durations=5 -m serial tests
.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 -m "not serial" tests
