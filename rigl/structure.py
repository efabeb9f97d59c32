"""The structure of a mask: how a layer's scores become its mask.

Every method decides a mask by choosing the highest scores of a layer: random scores when
masks are drawn, |g * w| for SNIP, |w| for DNW and gradual pruning, and at a drop-and-grow
update the drop scores (which active connections stay) and the grow scores (which join).
A structure restricts that one choice, on the kernel's matrix view
(`rigl.masking.MatrixView`, `(fan_in, fan_out)` with one column per output neuron):

| structure         | rule                                                                |
| ----------------- | ------------------------------------------------------------------- |
| `unstructured`    | any connections (the paper's masks)                                  |
| `constant_fan_in` | every active output neuron has exactly k inputs and ablated neurons  |
|                   | none (SRigL, Lasby et al. 2024)                                      |
| `'N:M'`           | at most N of every M consecutive inputs of each neuron (SR-STE, 2:4) |

Both structured rules are limits on groups of the matrix: constant fan-in's groups are the
columns (limit k, 0 for an ablated neuron), N:M's are runs of M inputs within a column
(limit N). So one selection serves both: within each group the best scores up to the
group's limit; constant fan-in takes all of them (every neuron filled to k), N:M the best
`count` of them. A drop-and-grow update keeps the best `n_keep` drop scores of the layer,
cut to each group's limit, and grows into the room each group has left.

Constant fan-in's neuron ablation follows SRigL's code (`RigLConstFanScheduler.
_get_neurons_to_ablate`): a weight is salient if it is among the top `n_keep` drop scores
or the top `n_prune` grow scores; a neuron with fewer than `max(1, floor(ablation_threshold
* k0))` salient weights is ablated (k0: the constant fan-in with every neuron active, as
SRigL's default `use_sparse_const_fan_in_for_ablation`), but the threshold drops to the
salient count of the neuron ranked `floor(budget / fan_in)`, so at least that many plus
one neurons stay and k never exceeds the fan-in. The layer's budget of weights is then
shared by the active neurons: k = floor(budget / active neurons). Which neurons are active
is decided afresh at every update (an ablated neuron returns when its grow scores make it
salient) and is read off the mask itself (a column with no connection), so it needs no
state of its own.

A layer the sparsity distribution leaves dense (sparsity 0) stays dense and unstructured.
"""

import math
import re

from absl import logging
import numpy as np
import tensorflow as tf

from rigl import selection
from rigl import sparse_utils

UNSTRUCTURED = 'unstructured'
CONSTANT_FAN_IN = 'constant_fan_in'
ALLOWED = (UNSTRUCTURED, CONSTANT_FAN_IN, "'N:M' with 1 <= N < M, e.g. '2:4'")
# SRigL's gamma_sal: the paper's and its code's value.
DEFAULT_ABLATION_THRESHOLD = 0.3

_N_OF_M_RE = re.compile(r'(\d+):(\d+)')


def check(structure):
  """Returns `structure` if it names a structure, else raises a ValueError naming it."""
  if structure in (UNSTRUCTURED, CONSTANT_FAN_IN):
    return structure
  match = isinstance(structure, str) and _N_OF_M_RE.fullmatch(structure)
  if not match or not 1 <= int(match.group(1)) < int(match.group(2)):
    raise ValueError(f'structure {structure!r} is not valid; allowed: {ALLOWED}.')
  return structure


def check_ablation_threshold(value):
  """Returns `value` as a float if it is a fraction in [0, 1], else raises a ValueError."""
  if isinstance(value, bool) or not isinstance(
      value, (int, float, np.floating)) or not 0 <= value <= 1:
    raise ValueError(f'ablation_threshold must be a fraction in [0, 1] (0: no neuron '
                     f'ablation), got {value!r}.')
  return float(value)


def for_layer(structure, key, shape, view, sparsity, ablation_threshold=0.0):
  """The selection rules of one masked kernel.

  Args:
    structure: a name `check` accepts.
    key: the kernel's name, for messages.
    shape: the kernel's shape.
    view: its `rigl.masking.MatrixView` (unused for unstructured masks).
    sparsity: the sparsity the distribution gives it, or None when no distribution is
      known (masks loaded from elsewhere): then the budget is the mask's own count.
    ablation_threshold: constant fan-in's gamma_sal for this kernel; 0: no ablation.

  Raises:
    ValueError: the kernel cannot have the structure (the message names it).
  """
  shape = tuple(int(d) for d in shape)
  if check(structure) == UNSTRUCTURED or sparsity == 0:
    return UnstructuredLayer(shape, sparsity)
  if structure == CONSTANT_FAN_IN:
    return ConstantFanInLayer(key, shape, view, sparsity, ablation_threshold)
  n, m = (int(part) for part in structure.split(':'))
  return NOfMLayer(key, shape, view, sparsity, n, m)


def _budget(size, sparsity):
  """The weights a kernel of `size` keeps at `sparsity` (the unstructured count)."""
  return None if sparsity is None else size - sparse_utils.get_n_zeros(size, sparsity)


class _LayerStructure:
  """The selection rules of one kernel (what `for_layer` returns)."""

  def summaries(self, mask):
    """Scalars worth watching of `mask` under this structure."""
    del mask
    return {}


class UnstructuredLayer(_LayerStructure):
  """Any connections: the best scores of the whole kernel."""

  def __init__(self, shape, sparsity):
    self.shape, self.sparsity = shape, sparsity
    self.count = _budget(math.prod(shape), sparsity)

  @property
  def target_sparsity(self):
    return self.sparsity

  def random_mask(self, random_state):
    return sparse_utils.get_mask_random_numpy(self.shape, self.sparsity, random_state)

  def select(self, scores, count):
    """A bool mask of the `count` best `scores` (kernel-shaped)."""
    return tf.reshape(selection.top_mask(tf.reshape(scores, [-1]), count), self.shape)

  def drop_and_grow(self, drop_scores, grow_scores, n_keep, n_prune):
    """`(kept, grown)` bool masks: the best `n_keep` drop scores, and the best `n_prune`
    grow scores of the others."""
    kept = selection.top_mask(tf.reshape(drop_scores, [-1]), n_keep)
    # Kept connections rank last, so the grown ones are all new or just dropped.
    grow_scores = tf.where(kept, tf.constant(-np.inf, tf.float32),
                           tf.reshape(grow_scores, [-1]))
    grown = selection.top_mask(grow_scores, n_prune)
    return tf.reshape(kept, self.shape), tf.reshape(grown, self.shape)


def _best_in_groups(scores, candidates, limits):
  """Of `candidates`, the `limits` best `scores` of every group (axis 1 of
  `(groups, members, neurons)` tensors), ties to the lower index.

  One sort per group finds the score at each group's limit; the scores above it are in,
  and of those equal to it the first ones that fit.
  """
  ranked = tf.where(candidates, scores, tf.constant(-np.inf, scores.dtype))
  limits = tf.broadcast_to(limits, (ranked.shape[0], 1, ranked.shape[2]))
  at_limit = tf.experimental.numpy.take_along_axis(
      tf.sort(ranked, axis=1, direction='DESCENDING'),
      tf.clip_by_value(limits - 1, 0, ranked.shape[1] - 1), axis=1)
  above = ranked > at_limit
  ties = tf.equal(ranked, at_limit)
  room_for_ties = limits - tf.reduce_sum(tf.cast(above, tf.int32), axis=1, keepdims=True)
  tie_rank = tf.cumsum(tf.cast(ties, tf.int32), axis=1)
  selected = tf.logical_or(above, tf.logical_and(ties, tie_rank <= room_for_ties))
  return tf.logical_and(candidates, tf.logical_and(selected, limits > 0))


class _GroupedLayer(_LayerStructure):
  """A kernel whose mask has a limit in every group of `members` consecutive inputs of
  one output neuron. Tensors are handled as `(fan_in / members, members, fan_out)`."""

  # Whether every group is filled up to its limit, whatever the count asked for.
  fills_groups = False

  def __init__(self, shape, view, sparsity, members):
    self.shape, self.view = shape, view
    self.size = math.prod(shape)
    self.budget = _budget(self.size, sparsity)
    self._grouped_shape = (view.fan_in // members, members, view.fan_out)

  @property
  def target_sparsity(self):
    """The sparsity of the masks this structure draws (None if unknown)."""
    return None if self.count is None else 1.0 - self.count / self.size

  def _grouped(self, tensor):
    return tf.reshape(self.view.to_matrix(tensor), self._grouped_shape)

  def _kernel_shaped(self, grouped):
    matrix = tf.reshape(grouped, (self.view.fan_in, self.view.fan_out))
    return self.view.from_matrix(matrix, self.shape)

  def _top(self, grouped_scores, count):
    flat = selection.top_mask(tf.reshape(grouped_scores, [-1]), count)
    return tf.reshape(flat, self._grouped_shape)

  def random_mask(self, random_state):
    scores = random_state.uniform(size=self.shape).astype(np.float32)
    return self.select(tf.constant(scores), self.count)

  def select(self, scores, count):
    """A bool mask of the `count` best `scores` that obeys the structure."""
    grouped = self._grouped(tf.cast(scores, tf.float32))
    nothing = tf.zeros(self._grouped_shape, tf.bool)
    return self._kernel_shaped(
        self._fill(grouped, nothing, self._limits_of_count(count), count))

  def drop_and_grow(self, drop_scores, grow_scores, n_keep, n_prune):
    """`(kept, grown)`: the best `n_keep` drop scores cut to each group's limit, and the
    best grow scores of the others that fit in each group's room."""
    drop = self._grouped(tf.cast(drop_scores, tf.float32))
    grow = self._grouped(tf.cast(grow_scores, tf.float32))
    limits = self._limits(drop, grow, n_keep, n_prune)
    # The weights of ablated neurons (limit 0) rank last, as in SRigL.
    best = self._top(tf.where(limits > 0, drop, tf.constant(-np.inf, tf.float32)), n_keep)
    kept = _best_in_groups(drop, best, limits)
    grown = self._fill(grow, kept, limits, n_prune)
    return self._kernel_shaped(kept), self._kernel_shaped(grown)

  def _fill(self, scores, taken, limits, count):
    """The best `count` scores outside `taken` that fit in the room each group has left
    (with `fills_groups`, all of them)."""
    room = limits - tf.reduce_sum(tf.cast(taken, tf.int32), axis=1, keepdims=True)
    fitting = _best_in_groups(scores, tf.logical_not(taken), room)
    if self.fills_groups:
      return fitting
    best = self._top(tf.where(fitting, scores, tf.constant(-np.inf, tf.float32)), count)
    return tf.logical_and(fitting, best)

  def _limits_of_count(self, count):
    """Every group's limit when the kernel holds `count` weights, all neurons active."""
    raise NotImplementedError

  def _limits(self, drop, grow, n_keep, n_prune):
    """Every group's limit at a drop-and-grow update."""
    del drop, grow
    return self._limits_of_count(n_keep + n_prune)


class ConstantFanInLayer(_GroupedLayer):
  """Every active output neuron has exactly k inputs; ablated neurons have none."""

  fills_groups = True

  def __init__(self, key, shape, view, sparsity, ablation_threshold):
    super().__init__(shape, view, sparsity, members=view.fan_in)
    self.ablation_threshold = ablation_threshold
    self.count = None
    if self.budget is not None:
      fan_in_per_neuron = self.budget // view.fan_out
      if not fan_in_per_neuron:
        raise ValueError(
            f'constant_fan_in: {key!r} keeps {self.budget} weights at sparsity '
            f'{sparsity:g}, fewer than its {view.fan_out} output neurons, so a neuron '
            'would have no input; give it a lower sparsity (custom_sparsity_map).')
      self.count = fan_in_per_neuron * view.fan_out
      logging.info('constant_fan_in: %s keeps %d of %d inputs of each of its %d neurons: '
                   'sparsity %.6f (the distribution\'s %.6f).', key, fan_in_per_neuron,
                   view.fan_in, view.fan_out, self.target_sparsity, sparsity)

  def _limits_of_count(self, count):
    # At least one input each: a count below the neurons (gradual pruning's rounding of
    # its schedule) must not empty the layer.
    fan_in = tf.maximum(tf.cast(count, tf.int32) // self.view.fan_out, 1)
    return tf.fill((1, 1, self.view.fan_out), fan_in)

  def _limits(self, drop, grow, n_keep, n_prune):
    # Without a distribution the budget is the mask's own count.
    budget = n_keep + n_prune if self.budget is None else tf.constant(self.budget)
    if self.ablation_threshold:
      active = self._active_neurons(drop, grow, n_keep, n_prune, budget)
    else:
      active = tf.ones((self.view.fan_out,), tf.bool)
    fan_in = budget // tf.reduce_sum(tf.cast(active, tf.int32))
    return tf.reshape(tf.where(active, fan_in, 0), (1, 1, self.view.fan_out))

  def _active_neurons(self, drop, grow, n_keep, n_prune, budget):
    """SRigL's dynamic ablation (see the module docstring)."""
    salient = tf.logical_or(self._top(drop, n_keep), self._top(grow, n_prune))
    counts = tf.reduce_sum(tf.cast(salient, tf.int32), axis=(0, 1))
    fan_in_all_active = budget // self.view.fan_out
    # In float64, as SRigL's Python `int(gamma * fan_in)` (0.7 * 10 is 7 there, 6.99 in
    # float32).
    threshold = tf.maximum(1, tf.cast(tf.floor(
        self.ablation_threshold * tf.cast(fan_in_all_active, tf.float64)), tf.int32))
    fewest_neurons = tf.minimum(budget // self.view.fan_in, self.view.fan_out - 1)
    ranked_counts = tf.sort(counts, direction='DESCENDING')
    threshold = tf.minimum(threshold, tf.gather(ranked_counts, fewest_neurons))
    return counts >= threshold

  def summaries(self, mask):
    """The number of active (not ablated) neurons."""
    columns = tf.reduce_sum(self.view.to_matrix(tf.cast(mask, tf.float32)), axis=0)
    return {'active_neurons': tf.math.count_nonzero(columns, dtype=tf.float32)}


class NOfMLayer(_GroupedLayer):
  """At most N of every M consecutive inputs of each output neuron."""

  def __init__(self, key, shape, view, sparsity, n, m):
    if view.fan_in % m:
      raise ValueError(
          f"structure '{n}:{m}': {key!r} has fan-in {view.fan_in} (kernel {shape}), which "
          f'is not a multiple of M={m}; choose an M that divides it, or leave the weight '
          'dense or unmasked.')
    super().__init__(shape, view, sparsity, members=m)
    self.n = n
    capacity = self.size // m * n
    self.count = None if self.budget is None else min(self.budget, capacity)
    if self.budget is not None and self.budget > capacity:
      logging.warning(
          "structure '%d:%d' holds at most %d of the %d weights of %s; its sparsity is "
          '%.4f, not the distribution\'s %.4f.', n, m, capacity, self.size, key,
          self.target_sparsity, sparsity)

  def _limits_of_count(self, count):
    del count
    return tf.constant(self.n)
