"""Choosing the k largest scores of a layer without sorting them (radix select).

Drop-and-grow keeps the `n_keep` highest drop scores and grows the `n_prune` highest
grow scores of every layer at each mask update. A full sort does that in O(n log n) and
took 617 ms for one 2.4M-weight layer on 2 CPU cores, so an update of ResNet-50 cost
seconds; `top_mask` instead finds the k-th largest score by a radix select on two 16-bit
digits of order-preserving integer keys (a few linear passes compiled with XLA) and picks
exactly the set a stable descending sort would, ties included.
"""

import tensorflow as tf


def _sortable_keys(scores):
  """int32 keys in the order of the float32 `scores` (-0 counts as +0, as in top_k)."""
  scores = tf.where(tf.equal(scores, 0.0), tf.zeros_like(scores), scores)
  bits = tf.bitcast(scores, tf.int32)
  # Negative floats order backwards by their bits; flipping all but the sign fixes that.
  return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(0x7fffffff)), bits)


def _select_digit(histogram, count):
  """The digit whose bucket holds the `count`-th largest key, and the keys above it."""
  above = tf.cumsum(histogram, reverse=True, exclusive=True)
  buckets = tf.range(tf.shape(histogram)[0])
  # The highest bucket that, with everything above it, holds at least `count` keys.
  digit = tf.maximum(tf.reduce_max(tf.where(above + histogram >= count, buckets, -1)), 0)
  return digit, tf.gather(above, digit)


def top_mask(scores, count):
  """A boolean mask of the `count` largest `scores` (flat); ties go to lower indices.

  The same set as the first `count` of a stable descending sort (top_k's order). The
  passes are compiled with XLA, which fuses them: 4-5x faster on CPU than one op per pass.
  """
  return _compiled_top_mask(scores, tf.convert_to_tensor(count, tf.int32))


@tf.function(jit_compile=True)
def _compiled_top_mask(scores, count):
  size = scores.shape[0]
  count = tf.clip_by_value(tf.cast(count, tf.int32), 0, size)
  keys = _sortable_keys(tf.cast(scores, tf.float32))
  high = tf.bitwise.right_shift(keys, 16) + 32768  # 0 .. 65535
  # unsorted_segment_sum rather than bincount: its size is static, so XLA compiles it.
  high_digit, above_high = _select_digit(
      tf.math.unsorted_segment_sum(tf.ones_like(high), high, 65536), count)
  need = count - above_high
  in_bucket = tf.cast(tf.equal(high, high_digit), tf.int32)
  low = tf.bitwise.bitwise_and(keys, 0xffff)
  low_histogram = tf.math.unsorted_segment_sum(in_bucket, low, 65536)
  low_digit, above_low = _select_digit(low_histogram, need)
  threshold = tf.bitwise.bitwise_or(tf.bitwise.left_shift(high_digit - 32768, 16),
                                    low_digit)
  # Keys equal to the threshold fill the remaining places from the lowest index on.
  ties = tf.equal(keys, threshold)
  tie_rank = tf.cumsum(tf.cast(ties, tf.int32))
  selected = tf.logical_or(keys > threshold,
                           tf.logical_and(ties, tie_rank <= need - above_low))
  return tf.logical_and(selected, count > 0)
