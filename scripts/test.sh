#!/usr/bin/env bash
# Installs cdm_jax with its test extra into .venv and runs the test suite on two pytest workers.
# Extra arguments go to pytest, e.g. `-m "not slow"` for the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test
.venv/bin/python -m pytest -q -n 2 --durations=15 tests "$@"
