#!/usr/bin/env bash
# Installs cdm_jax with its test extra into .venv and runs the test suite on two pytest workers.
# Extra arguments go to pytest, e.g. `-m "not slow"` for the fast tier. Each test file runs on one
# worker (--dist loadfile), so a module's trained fixture is built once, not once per worker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh test
.venv/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 tests "$@"
