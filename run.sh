#!/usr/bin/env bash
# Creates the virtualenv `env`, installs rigl with its CPU, test and bench extras (bench:
# torch and rigl-torch, for the side-by-side benchmark's quick test), runs the tests.
# Extra arguments go to pytest, e.g. `bash run.sh tests/test_sparse_utils.py -k erk`.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv env
source env/bin/activate
python -m pip install --quiet --disable-pip-version-check -e ".[cpu,test,bench]"
export TF_CPP_MIN_LOG_LEVEL=3
python -m pytest -n 2 tests "$@"
