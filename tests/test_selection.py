"""Tests of rigl.selection: the radix-select top mask."""

import numpy as np
import pytest
import tensorflow as tf

from rigl import selection


def _reference_top_mask(scores, count):
  """The first `count` of a stable descending sort, as top_k orders them."""
  order = np.argsort(-scores, kind='stable')
  mask = np.zeros(scores.shape, bool)
  mask[order[:count]] = True
  return mask


@pytest.mark.parametrize('seed', range(6))
def test_top_mask_selects_like_a_stable_descending_sort(seed):
  rng = np.random.RandomState(seed)
  size = rng.randint(1, 3000)
  scores = rng.randn(size).astype(np.float32) * 10.0**rng.randint(-6, 6)
  # Ties, signed zeros, tiny and infinite values, as drop and grow scores have them.
  scores[rng.rand(size) < 0.3] = 0.0
  scores[rng.rand(size) < 0.05] = -0.0
  scores[rng.rand(size) < 0.1] = scores[0]
  scores[rng.rand(size) < 0.05] = -np.inf
  scores[rng.rand(size) < 0.02] = np.float32(1e-30)
  for count in sorted({0, 1, size // 3, size // 2, size - 1, size, rng.randint(0, size + 1)}):
    actual = selection.top_mask(tf.constant(scores), tf.constant(count)).numpy()
    np.testing.assert_array_equal(actual, _reference_top_mask(scores, count),
                                  err_msg=f'size {size}, count {count}')


def test_count_outside_the_layer_is_clipped():
  scores = tf.constant([3.0, 1.0, 2.0])
  np.testing.assert_array_equal(selection.top_mask(scores, 7).numpy(), [True] * 3)
  np.testing.assert_array_equal(selection.top_mask(scores, -2).numpy(), [False] * 3)
