#!/usr/bin/env bash
# Creates the virtualenv `env`, installs rigl with its CPU, test, export, bench and hub
# extras (bench: torch and rigl-torch, for the side-by-side benchmark's quick test; hub:
# keras_hub, whose backbones the tests sparsify), runs the
# tests. Then, as the TPU extra pins TensorFlow 2.20 (the newest tensorflow-tpu), runs the
# core library's unit tests and a training run of every method once more in `env_tf220` under tensorflow-cpu 2.20.
# Extra arguments go to pytest and run the main suite only, e.g.
# `bash run.sh tests/test_sparse_utils.py -k erk`.
set -euo pipefail
cd "$(dirname "$0")"
export TF_CPP_MIN_LOG_LEVEL=3
python3 -m venv env
env/bin/python -m pip install --quiet --disable-pip-version-check -e ".[cpu,test,export,bench,hub]"
env/bin/python -m pytest -n 2 tests "$@"
if [ "$#" -eq 0 ]; then
  python3 -m venv env_tf220
  env_tf220/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" \
    tensorflow-cpu==2.20.0
  # The core's unit tests and one model.fit run of every method:
  # the whole suite runs once, under 2.21, to keep CI within its time.
  env_tf220/bin/python -m pytest -n 2 tests/test_layers.py tests/test_sparse_utils.py \
    tests/test_selection.py tests/test_training_methods.py tests/test_tf1_momentum.py \
    tests/test_mask_update_dispatch.py \
    tests/test_sparse_optimizers.py::test_model_fit_trains_to_target_sparsity
fi
