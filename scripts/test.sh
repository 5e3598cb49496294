#!/usr/bin/env bash
# Installs cdm_jax with its test extra into .venv and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test
.venv/bin/python -m pytest -q --durations=15 tests "$@"
