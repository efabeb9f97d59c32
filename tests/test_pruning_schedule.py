"""Tests of rigl.pruning_schedule: Zhu & Gupta's cubic schedule."""

import pytest
import tensorflow as tf

from rigl import pruning_schedule


@pytest.mark.parametrize('progress, expected', [
    (0.0, 0.1), (1.0, 0.9),
    # 0.9 - 0.8 * 0.5^3 = 0.8; 0.9 - 0.8 * 0.75^3 = 0.5625.
    (0.5, 0.8), (0.25, 0.5625)])
def test_cubic_schedule_from_initial_to_target(progress, expected):
  assert pruning_schedule.gradual_sparsity(progress, 0.1, 0.9) == pytest.approx(expected)
  on_tensor = pruning_schedule.gradual_sparsity(tf.constant(progress), 0.1, 0.9)
  assert float(on_tensor) == pytest.approx(expected)


def test_exponent_one_is_linear():
  assert pruning_schedule.gradual_sparsity(0.5, 0.0, 0.8, exponent=1.0) == pytest.approx(0.4)
