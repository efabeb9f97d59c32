"""Sparse optimizers: a Keras 3 optimizer wrapper that keeps masked kernels sparse.

`SparseOptimizerBase` wraps any Keras optimizer the way `keras.optimizers.
LossScaleOptimizer` does. It finds the mask of every masked kernel (`rigl.layers`), hands
the kernels' gradients to the inner optimizer and, on mask-update steps, runs the method's
drop-and-grow in TensorFlow ops. The dynamic-sparse methods differ only in their scores
and timing:

| class                     | drop score        | grow score            | update           |
| ------------------------- | ----------------- | --------------------- | ---------------- |
| `SparseSETOptimizer`      | abs(w) + noise    | uniform random        | after the step   |
| `SparseStaticOptimizer`   | abs(w) + noise    | the old mask (regrow) | after the step   |
| `SparseMomentumOptimizer` | abs(w) + noise    | abs(EMA of gradient)  | after the step   |
| `SparseRigLOptimizer`     | abs(w) + noise    | abs(dense gradient)   | instead of step  |

`SparseSnipOptimizer`, `SparseDNWOptimizer` and `GradualPruningOptimizer` are separate
small classes on the same base.

**Gradients of inactive weights.** The forward pass uses `kernel * mask`, so an inactive
weight affects neither the outputs nor a drop or grow decision (drop scores read
`mask * w`; a grown connection is overwritten with `grow_init` and its optimizer slots are
reset). When the inner optimizer updates every weight on its own (SGD, momentum, Adam,
...), the wrapper therefore passes the kernels' gradients through unmasked: inactive
weights keep training on the straight-through gradient, invisibly, and a step costs what
a dense step costs. Where an inactive gradient *would* change active weights — optimizers
that couple weights (global-norm clipping, per-layer trust ratios, factored moments) — and
for magnitude pruning, which ranks raw weights, the gradient is the original's: the
masked loss gradient plus the regularizer's gradient on every weight.

**Scores** use the loss gradient all-reduced over replicas, without the kernels'
regularization term (the original scored `dL/d(masked weights)`), unscaled by the inner
optimizer's `loss_scale_factor`.

Without a distribution strategy the step runs directly; under one it runs in
cross-replica context (entered through `merge_call`, as `LossScaleOptimizer` does), so
scores use the all-reduced gradient and masks are computed once and written to every
replica.
"""

import contextlib
import math
import re

import keras
import numpy as np
import tensorflow as tf

from keras.src.utils import tracking

from rigl import layers as masked_layers_lib
from rigl import pruning_schedule
from rigl import selection
from rigl import sparse_layers
from rigl import sparse_utils
from rigl import tf1_momentum

DROP_FRACTION_ANNEALS = ('constant', 'cosine', 'exponential[_k]')
GROW_INITS = ('zeros', 'random_normal[_d]', 'random_uniform[_d]', 'initial_dist[_d]')
GRADIENT_GROW_INITS = ('grad_scale[_d]', 'grad_sign[_d]')
_NUMBER_SUFFIX_RE = re.compile(r'.*_(\d*\.?\d*)$')
_DROP_NOISE_STD = 1e-5

# Purposes folded into the stateless seeds, so each random draw has its own stream.
_SEED_DROP, _SEED_GROW, _SEED_GROW_INIT = range(3)
# The random draws of an update name Philox, which is what 'auto_select' picks on CPUs and
# GPUs without XLA (same values); under XLA on a CPU, 'auto_select' takes 37 ms for the
# MNIST MLP's 235k-weight layer, Philox 0.6 ms.
_RNG_ALG = 'philox'

# Optimizers whose update of a weight reads only that weight's gradient and slots, so an
# inactive weight's gradient cannot change an active weight's update.
_ELEMENTWISE_OPTIMIZERS = (
    keras.optimizers.SGD, keras.optimizers.Adam, keras.optimizers.AdamW,
    keras.optimizers.Adamax, keras.optimizers.Nadam, keras.optimizers.RMSprop,
    keras.optimizers.Adagrad, keras.optimizers.Adadelta, keras.optimizers.Ftrl,
    keras.optimizers.Lion, tf1_momentum.TF1MomentumOptimizer)
# The slot of Keras' `use_ema`: a moving average of the weight itself.
_WEIGHT_AVERAGE_SLOT = 'average'


def extract_number(token):
  """`'exponential_3'` -> 3.0, `'grad_scale_.5'` -> 0.5, `'exponential'` -> 1.0."""
  match = _NUMBER_SUFFIX_RE.match(token)
  if match is None or not match.group(1) or match.group(1) == '.':
    return 1.0
  return float(match.group(1))


def _parse_grow_init(grow_init, allow_gradient):
  """Validates `grow_init`; returns (kind, divisor)."""
  kinds = ('random_normal', 'random_uniform', 'initial_dist') + (
      ('grad_scale', 'grad_sign') if allow_gradient else ())
  allowed = GROW_INITS + (GRADIENT_GROW_INITS if allow_gradient else ())
  match = isinstance(grow_init, str) and re.fullmatch(
      r'(%s)(?:_(\d*\.?\d+))?' % '|'.join(kinds), grow_init)
  if grow_init == 'zeros':
    return 'zeros', 1.0
  if not match or (match.group(2) is not None and float(match.group(2)) == 0):
    raise ValueError(f'Grow-Init: {grow_init!r} is not a valid option; allowed: {allowed}.')
  return match.group(1), float(match.group(2) or 1.0)


def _check_anneal(drop_fraction_anneal, begin_step, end_step):
  if not isinstance(drop_fraction_anneal, str) or not (
      drop_fraction_anneal in ('constant', 'cosine') or
      re.fullmatch(r'exponential(_\d*\.?\d+)?', drop_fraction_anneal)):
    raise ValueError(
        f'drop_fraction_anneal: {drop_fraction_anneal!r} is not valid; allowed: '
        f'{DROP_FRACTION_ANNEALS}.')
  if drop_fraction_anneal != 'constant' and end_step <= begin_step:
    raise ValueError(
        f'drop_fraction_anneal={drop_fraction_anneal!r} decays between begin_step and '
        f'end_step, so it needs end_step > begin_step; got begin_step={begin_step}, '
        f'end_step={end_step}.')


def _check_integer(name, value, minimum=None):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be an integer, got {value!r}.')
  if minimum is not None and value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}.')


def _check_schedule(begin_step, end_step, frequency):
  for name, value in (('begin_step', begin_step), ('end_step', end_step),
                      ('frequency', frequency)):
    _check_integer(name, value)
  if frequency <= 0:
    raise ValueError(f'frequency must be a positive number of steps, got {frequency}.')
  if begin_step < 0:
    raise ValueError(f'begin_step must be >= 0, got {begin_step}.')
  if 0 <= end_step < begin_step:
    raise ValueError(
        f'end_step ({end_step}) must be >= begin_step ({begin_step}); a negative '
        'end_step means updates never stop.')


def _check_fraction(name, value):
  if isinstance(value, bool) or not isinstance(
      value, (int, float, np.floating)) or not 0 <= value <= 1:
    raise ValueError(f'{name} must be in [0, 1], got {value!r}.')


def _applies_before_update(optimizer, tested_step_offset):
  """`steps_without_update` of a schedule (`begin_step`, `end_step`, `frequency`,
  `last_mask_update_step`) whose apply tests the step `iterations + tested_step_offset`."""
  if not optimizer.built:
    return 0
  next_step = int(optimizer.iterations.numpy()) + tested_step_offset
  first = max(next_step, optimizer.begin_step,
              int(optimizer.last_mask_update_step.numpy()) + optimizer.frequency)
  if 0 <= optimizer.end_step < first:
    return math.inf
  return first - next_step


def _is_update_step(step, begin_step, end_step, frequency, last_update_step):
  """begin <= step <= end (a negative end: no end) and last update + frequency <= step."""
  step = tf.cast(step, tf.int64)
  in_range = step >= begin_step
  if end_step >= 0:
    in_range = tf.logical_and(in_range, step <= end_step)
  due = tf.convert_to_tensor(last_update_step) + frequency <= step
  return tf.logical_and(in_range, due)


class _Slot:
  """A per-weight variable of the inner optimizer, and how it started."""

  def __init__(self, variable, name, initializer):
    self.variable, self.name, self.initializer = variable, name, initializer

  def initial_value(self, shape=None):
    """The starting value; `shape` is the dense kernel's when the slot stores only the
    active entries of a sparse layer."""
    shape = self.variable.shape if shape is None else shape
    return keras.initializers.get(self.initializer)(shape, self.variable.dtype)


class _MaskedParameter:
  """A masked layer's kernel and mask, as the drop-and-grow update reads and writes them."""

  sparse = False

  def __init__(self, kernel, mask):
    self.variable, self.mask = kernel, mask

  def dense_kernel(self):
    return tf.convert_to_tensor(self.variable)

  def dense_mask(self):
    return tf.convert_to_tensor(self.mask)

  def dense_slot(self, slot):
    return tf.convert_to_tensor(slot)

  def assign(self, kernel, mask, slots):
    self.variable.assign(kernel)
    for slot, value in slots:
      slot.assign(value)
    self.mask.assign(mask)


class _SparseParameter:
  """A `SparseDense` layer: its update works on dense temporaries (on update steps only)
  and writes back the active weights, their positions and their slots."""

  sparse = True

  def __init__(self, layer):
    self.layer = layer
    self.variable = layer.values
    self.mask = sparse_layers.MaskView(layer)

  def dense_kernel(self):
    return self.layer.dense_kernel()

  def dense_mask(self):
    return self.layer.dense_mask()

  def dense_slot(self, slot):
    return sparse_layers.scatter_to_dense(self.layer.kernel_positions(),
                                          tf.convert_to_tensor(slot), self.layer.kernel_shape)

  def assign(self, kernel, mask, slots):
    positions = self.layer.assign_active(mask, kernel)
    for slot, value in slots:
      slot.assign(tf.gather(tf.reshape(value, [-1]), positions))


def _record_slot_specs(optimizer, var_list):
  """Builds `optimizer`, recording `add_variable_from_reference`.

  Returns:
    `{id(reference variable): [(slot name, initializer, slot variable)]}`.
  """
  recorded = {}
  original = optimizer.add_variable_from_reference

  def recording(reference_variable, name=None, initializer='zeros'):
    slot = original(reference_variable, name=name, initializer=initializer)
    recorded.setdefault(id(reference_variable), []).append((name, initializer, slot))
    return slot

  optimizer.add_variable_from_reference = recording
  try:
    optimizer.build(var_list)
  finally:
    del optimizer.add_variable_from_reference
  return recorded


class _OneReplica:
  """The step without a distribution strategy: gradients are already the global ones."""

  num_replicas = 1

  def reduce_sum(self, value):
    return value

  def run(self, fn, args):
    return fn(*args)


class _Replicas:
  """The step in cross-replica context: per-replica gradients, mirrored variables."""

  def __init__(self, strategy):
    self.strategy = strategy
    self.num_replicas = strategy.num_replicas_in_sync

  def reduce_sum(self, value):
    return self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

  def run(self, fn, args):
    def in_branch(grads, variables):
      # Inside a tf.cond branch, gradients from the outer graph must be brought into
      # the branch graph before the all-reduce's custom gradient sees them.
      grads = [tf.identity(g) if isinstance(g, tf.Tensor) else g for g in grads]
      return fn(grads, variables)

    return self.strategy.extended.call_for_each_replica(in_branch, args=args)


@keras.saving.register_keras_serializable(package='rigl')
class SparseOptimizerBase(keras.optimizers.Optimizer):
  """Wraps a Keras optimizer and keeps the masks of masked kernels.

  Subclasses implement `_apply_step(replicas, grads, variables)`, which runs once per
  step with the (per-replica) `grads`; `replicas.run` applies a function per replica,
  `replicas.reduce_sum` all-reduces a per-replica value.

  Args:
    optimizer: the inner `keras.optimizers.Optimizer` that updates the weights; built or
      not (a built one keeps its state, e.g. after dense pre-training).
    default_sparsity: if not None, `build` initialises the masks with this overall
      sparsity, distributed by `mask_init_method` (original flag names) — but only if
      every mask is still all ones: masks that were loaded (`load_weights`, a restored
      checkpoint) or set by hand are kept. `initialize_masks()` draws them explicitly.
    mask_init_method: 'random' (uniform), 'erdos_renyi', 'erdos_renyi_kernel' or 'str'.
    custom_sparsity_map: `{layer name: sparsity}` for layers outside the budget.
    erk_power_scale: exponent of the ERK densities (>= 0).
    stateless_seed_offset: user seed (an integer >= 0); every random draw derives from
      it, the layer index and the step, so replicas, workers and restarts draw the same
      numbers.
    regularization_in_gradients: whether the gradients given to `apply` include the
      gradients of the kernels' regularization losses, as in `model.fit` and in custom
      loops that add `model.losses` to the loss. Scores subtract that term.
  """

  # Whether inactive weights receive the straight-through gradient (see the module
  # docstring); a method that ranks raw weights sets it to False.
  _straight_through_allowed = True

  def __init__(self, optimizer, default_sparsity=None, mask_init_method='random',
               custom_sparsity_map=None, erk_power_scale=1.0, stateless_seed_offset=0,
               regularization_in_gradients=True, name='SparseOptimizer', **kwargs):
    if not isinstance(optimizer, keras.optimizers.Optimizer):
      raise ValueError(
          f'optimizer must be a keras.optimizers.Optimizer, got {optimizer!r}.')
    if isinstance(optimizer, SparseOptimizerBase):
      raise ValueError('A sparse optimizer cannot wrap another sparse optimizer.')
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
      raise ValueError(
          'A sparse optimizer cannot wrap a LossScaleOptimizer (its scores would see '
          'scaled, possibly non-finite gradients); wrap the sparse optimizer instead: '
          'keras.optimizers.LossScaleOptimizer(SparseRigLOptimizer(...)), which is what '
          'model.compile does under the mixed_float16 policy.')
    if optimizer.gradient_accumulation_steps:
      raise ValueError(
          f'The inner optimizer accumulates gradients over '
          f'{optimizer.gradient_accumulation_steps} steps, which the mask schedule does '
          'not follow; sparse optimizers need gradient_accumulation_steps=None.')
    if kwargs:
      raise ValueError(
          f'{type(self).__name__} does not support arguments {sorted(kwargs)}; set '
          'them on the inner optimizer.')
    if default_sparsity is not None:
      sparse_utils.check_sparsity(default_sparsity, 'default_sparsity')
    if mask_init_method not in sparse_utils.MASK_INIT_METHODS:
      raise ValueError(
          f'mask_init_method {mask_init_method!r} is not valid; choose one of '
          f'{sparse_utils.MASK_INIT_METHODS}.')
    for layer, sparsity in (custom_sparsity_map or {}).items():
      sparse_utils.check_sparsity(sparsity, f'custom_sparsity_map[{layer!r}]')
    _check_integer('stateless_seed_offset', stateless_seed_offset, minimum=0)
    super().__init__(learning_rate=0.0, name=name)
    self.inner_optimizer = optimizer
    self.default_sparsity = default_sparsity
    self.mask_init_method = mask_init_method
    self.custom_sparsity_map = dict(custom_sparsity_map or {})
    self.erk_power_scale = sparse_utils.check_erk_power_scale(erk_power_scale)
    self.stateless_seed_offset = int(stateless_seed_offset)
    self.regularization_in_gradients = bool(regularization_in_gradients)

  # --- Building ---------------------------------------------------------------------

  @tracking.no_automatic_dependency_tracking
  def build(self, var_list):
    var_list = list(var_list)
    self._params = []
    self._masked_index = {}
    for var in var_list:
      mask = masked_layers_lib.get_mask(var)
      sparse_layer = sparse_layers.get_sparse_layer(var)
      if mask is not None or sparse_layer is not None:
        self._masked_index[id(var)] = len(self._params)
        self._params.append(_MaskedParameter(var, mask) if mask is not None
                            else _SparseParameter(sparse_layer))
    if not self._params:
      raise ValueError(
          f'{type(self).__name__} found no masked kernels among the '
          f'{len(var_list)} variables it was given; build the model from '
          'rigl.layers.MaskedDense/MaskedConv2D/MaskedDepthwiseConv2D or convert it '
          'with rigl.layers.sparsify_model.')
    self._kernels = [p.variable for p in self._params]
    self._masks = [p.mask for p in self._params]
    if any(p.sparse for p in self._params):
      self._check_sparse_execution()
    self._layer_names = sparse_utils.layer_names_of_masks(self._masks)
    self._slots = self._find_inner_slots(var_list)
    self._straight_through = self._straight_through_allowed and (
        isinstance(self.inner_optimizer, _ELEMENTWISE_OPTIMIZERS) and
        self.inner_optimizer.clipnorm is None and
        self.inner_optimizer.global_clipnorm is None)
    self.changed_connections = self.add_variable(
        shape=(), dtype='float32', initializer='zeros', name='changed_connections')
    self._build_method_state()
    super().build(var_list)
    # `model.fit` may build the optimizer while tracing its first step; the masks must
    # be written once, now, and not on every step of the traced function.
    with tf.init_scope():
      if all(not p.sparse and bool(tf.reduce_all(tf.equal(p.mask, 1)))
             for p in self._params):
        self._initialize_masks()

  # Methods that train `rigl.sparse_layers.SparseDense` layers: they need the dense
  # gradient on update steps at most.
  _supports_sparse_execution = False

  def _check_sparse_execution(self):
    if not self._supports_sparse_execution:
      raise ValueError(
          f'{type(self).__name__} needs dense weights or gradients at every step, which '
          'sparse execution (rigl.sparse_layers.SparseDense) does not keep; use '
          'SparseSETOptimizer, SparseStaticOptimizer or SparseRigLOptimizer, or masked '
          'layers.')
    if tf.distribute.has_strategy():
      raise ValueError('Sparse execution (rigl.sparse_layers.SparseDense) runs on the '
                       'default strategy only (one device).')

  def _find_inner_slots(self, var_list):
    """Builds the inner optimizer (if needed); returns each masked kernel's slots."""
    inner = self.inner_optimizer
    if not inner.built:
      recorded = _record_slot_specs(inner, var_list)
    else:
      # Replay the build of a fresh copy, to learn the names and initial values of
      # the slots the built optimizer made, then find them by name.
      try:
        probe = type(inner).from_config(inner.get_config())
        recorded = _record_slot_specs(probe, var_list)
      except Exception as error:  # pylint: disable=broad-except
        raise ValueError(
            f'Could not find the slots of the built optimizer {type(inner).__name__} '
            f'({type(error).__name__}: {error}); wrap an optimizer that is not built '
            'yet.') from error
      by_name = {v.name: v for v in inner.variables}
      recorded = {
          key: [(name, init, by_name.get(slot.name)) for name, init, slot in specs]
          for key, specs in recorded.items()}
    slots = []
    for kernel in self._kernels:
      specs = recorded.get(id(kernel), [])
      missing = [name for name, _, slot in specs if slot is None]
      if missing:
        raise ValueError(
            f'The built optimizer {type(inner).__name__} has no slots {missing} for '
            f'{kernel.path}: it was built for other variables. Wrap an optimizer that '
            'is not built yet, or the one that trained this model.')
      slots.append([_Slot(slot, name, init) for name, init, slot in specs
                    if tuple(slot.shape) == tuple(kernel.shape)])
    return slots

  def _build_method_state(self):
    """Creates the method's own variables."""

  def initialize_masks(self):
    """Draws the masks from `default_sparsity` and `mask_init_method`, now."""
    self._require_built()
    if self.default_sparsity is None:
      raise ValueError(f'{type(self).__name__} has no default_sparsity to draw masks at.')
    self._initialize_masks()

  def _initialize_masks(self):
    if self.default_sparsity is None:
      return
    sparse_utils.get_mask_init_fn(
        self._masks, self.mask_init_method, self.default_sparsity,
        self.custom_sparsity_map, erk_power_scale=self.erk_power_scale,
        mask_fn=sparse_utils.seeded_mask_random(self.stateless_seed_offset),
        extract_name_fn=sparse_utils.layer_name_of_mask)()

  def _require_built(self):
    if getattr(self, '_masks', None) is None:
      raise ValueError(
          f'{type(self).__name__} is not built yet, so it has no masks; build the '
          'optimizer first: optimizer.build(model.trainable_variables), or train a step.')

  def layer_sparsities(self, method=None, default_sparsity=None):
    """`{mask name: target sparsity}` of the configured distribution."""
    self._require_built()
    return sparse_utils.get_sparsities(
        self._masks, method or self.mask_init_method,
        self.default_sparsity if default_sparsity is None else default_sparsity,
        self.custom_sparsity_map, erk_power_scale=self.erk_power_scale,
        extract_name_fn=sparse_utils.layer_name_of_mask)

  # --- Delegation to the inner optimizer (as LossScaleOptimizer does) ----------------

  @property
  def variables(self):
    return self._variables + self.inner_optimizer.variables

  @property
  def learning_rate(self):
    return self.inner_optimizer.learning_rate

  @learning_rate.setter
  def learning_rate(self, learning_rate):
    self.inner_optimizer.learning_rate = learning_rate

  @property
  def iterations(self):
    return self.inner_optimizer.iterations

  def scale_loss(self, loss):
    return self.inner_optimizer.scale_loss(loss)

  def finalize_variable_values(self, var_list):
    self.inner_optimizer.finalize_variable_values(var_list)

  def stateless_apply(self, optimizer_variables, grads, trainable_variables):
    raise ValueError(f'{type(self).__name__} supports only the TensorFlow backend.')

  @property
  def masks(self):
    self._require_built()
    return list(self._masks)

  @property
  def kernels(self):
    self._require_built()
    return list(self._kernels)

  # --- Applying gradients -------------------------------------------------------------

  def apply(self, grads, trainable_variables=None):
    if trainable_variables is None:
      if not self.built:
        raise ValueError(
            'When passing `grads` without `variables`, the optimizer must already be '
            'built; call `optimizer.build(trainable_variables)` first.')
      trainable_variables = self.inner_optimizer._trainable_variables  # pylint: disable=protected-access
    trainable_variables = list(trainable_variables)
    grads = list(grads)
    if not self.built:
      with keras.name_scope(self.name, caller=self):
        self.build(trainable_variables)
      self.built = True
    if tf.distribute.in_cross_replica_context():
      raise ValueError('apply() must be called in a replica context.')
    if not tf.distribute.has_strategy():
      self._apply_step(_OneReplica(), grads, trainable_variables)
    else:
      tf.distribute.get_replica_context().merge_call(
          lambda strategy, g, v: self._apply_step(_Replicas(strategy), g, v),
          args=(grads, trainable_variables))
    return self.iterations

  def _apply_step(self, replicas, grads, variables):
    raise NotImplementedError(f'{type(self).__name__} must define how it applies.')

  # --- The mask-update test, decided on the host --------------------------------------

  def steps_without_update(self):
    """How many of the next `apply` calls certainly update no mask; `math.inf`: none will.

    Read on the host from the step counter and the schedule, for `no_update_due`. It
    stays true however the steps are run: an apply advances the step by at most one,
    and one that is skipped (a non-finite loss-scaled step) advances it by none.
    """
    return math.inf

  @contextlib.contextmanager
  def no_update_due(self):
    """Applies traced inside leave out the in-graph mask-update test.

    Every step tests whether a mask update is due (a `tf.cond`), which costs even when
    no update is (`rigl.mask_update_dispatch` says how much). A training loop that
    knows no update is due (`steps_without_update`) traces a second copy of its step in
    this context and calls it for those steps; the copy with the test runs the others.
    """
    outer = self._no_update_due
    self._no_update_due = True
    try:
      yield
    finally:
      self._no_update_due = outer

  _no_update_due = False

  def _if_update_due(self, is_due, update, otherwise=lambda: None):
    """`update()` if `is_due()` (a scalar bool tensor), else `otherwise()`, in the graph."""
    if self._no_update_due:
      otherwise()
    else:
      tf.cond(is_due(), update, otherwise)

  def _inner_apply(self, replicas, grads, variables, straight_through=None):
    """The inner optimizer's step, per replica."""
    if straight_through is None:
      straight_through = self._straight_through

    def replica_apply(grads, variables):
      if not straight_through:
        grads = [self._original_gradient(g, v) for g, v in zip(grads, variables)]
      self.inner_optimizer.apply(grads, variables)

    replicas.run(replica_apply, (grads, variables))

  def _original_gradient(self, grad, variable):
    """The original's kernel gradient: mask * (loss gradient) + regularizer gradient."""
    index = self._masked_index.get(id(variable))
    if grad is None or index is None or self._params[index].sparse:
      return grad  # a sparse layer's gradient is already that of its active weights
    mask = tf.cast(self._masks[index], grad.dtype)
    regularization = self._regularization_gradient(index)
    if regularization is None:
      return grad * mask
    # This replica's share of the gradient as it reached us: Keras divides the loss by
    # the number of replicas, and the inner optimizer's scale_loss multiplied it.
    share = tf.cast(regularization, grad.dtype) * (
        self._loss_scale() / tf.distribute.get_strategy().num_replicas_in_sync)
    return (grad - share) * mask + share

  def _loss_scale(self):
    return self.inner_optimizer.loss_scale_factor or 1.0

  def _regularization_gradient(self, index):
    """The gradient of kernel `index`'s regularization loss, if the gradients have it."""
    kernel = self._kernels[index]
    regularizer = getattr(kernel, 'regularizer', None)
    if regularizer is None or not self.regularization_in_gradients:
      return None
    value = tf.convert_to_tensor(kernel)
    with tf.GradientTape() as tape:
      tape.watch(value)
      penalty = regularizer(value)
    return tape.gradient(penalty, value)

  def _loss_gradients(self, replicas, grads, variables):
    """All-reduced loss gradients of the masked kernels, in kernel order.

    The mean gradient of the loss over the global batch (Keras scales each replica's
    loss by 1/replicas), unscaled by the inner optimizer's loss_scale_factor, without
    the kernels' regularization term.
    """
    reduced = [None] * len(self._kernels)
    for grad, var in zip(grads, variables):
      index = self._masked_index.get(id(var))
      if index is not None:
        if grad is None:
          raise ValueError(f'Masked kernel {var.path} received no gradient.')
        if self._params[index].sparse:
          # The layer kept the dense loss gradient's candidates in its backward pass.
          reduced[index] = self._params[index].layer.dense_gradient_from_candidates()
          continue
        gradient = replicas.reduce_sum(grad) / self._loss_scale()
        regularization = self._regularization_gradient(index)
        if regularization is not None:
          gradient -= tf.cast(regularization, gradient.dtype)
        reduced[index] = gradient
    missing = [self._kernels[i].path for i, g in enumerate(reduced) if g is None]
    if missing:
      raise ValueError(f'No gradients were given for the masked kernels {missing}.')
    return reduced

  def _step(self):
    return tf.convert_to_tensor(self.iterations)

  def _seed(self, layer_index, purpose, step):
    base = tf.constant([self.stateless_seed_offset, layer_index * 16 + purpose],
                       dtype=tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64))

  # --- Summaries ----------------------------------------------------------------------

  def sparsity_summaries(self):
    """Scalars a user wants to see: global and per-layer sparsity and the last update."""
    self._require_built()
    summaries = {f'sparsity/{name}': value
                 for name, value in sparse_utils.sparsity_summary(self._masks).items()}
    summaries['mask_update/changed_connections'] = tf.convert_to_tensor(
        self.changed_connections)
    return summaries

  def get_config(self):
    return {
        'name': self.name,
        'optimizer': keras.saving.serialize_keras_object(self.inner_optimizer),
        'default_sparsity': self.default_sparsity,
        'mask_init_method': self.mask_init_method,
        'custom_sparsity_map': self.custom_sparsity_map,
        'erk_power_scale': self.erk_power_scale,
        'stateless_seed_offset': self.stateless_seed_offset,
        'regularization_in_gradients': self.regularization_in_gradients,
    }

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config['optimizer'] = keras.saving.deserialize_keras_object(
        config['optimizer'], custom_objects=custom_objects)
    return cls(**config)


@keras.saving.register_keras_serializable(package='rigl')
class SparseSETOptimizer(SparseOptimizerBase):
  """Sparse Evolutionary Training: drop the weakest weights, grow at random.

  Args:
    optimizer: the inner Keras optimizer.
    begin_step: first step at which masks may be updated.
    end_step: last step (inclusive) at which masks may be updated; negative: no end.
    frequency: steps between mask updates.
    drop_fraction: fraction of each layer's active connections replaced per update.
    drop_fraction_anneal: 'constant', 'cosine' or 'exponential[_k]'.
    grow_init: value of new connections: 'zeros', 'random_normal[_d]',
      'random_uniform[_d]' or 'initial_dist[_d]' (divided by d).
    **kwargs: mask initialisation and seed arguments of `SparseOptimizerBase`.
  """

  _reinit_when_same = False
  _allow_gradient_grow_init = False
  _supports_sparse_execution = True

  def __init__(self, optimizer, begin_step=0, end_step=-1, frequency=100,
               drop_fraction=0.1, drop_fraction_anneal='constant', grow_init='zeros',
               name='SparseSETOptimizer', **kwargs):
    _check_schedule(begin_step, end_step, frequency)
    _check_fraction('drop_fraction', drop_fraction)
    _check_anneal(drop_fraction_anneal, begin_step, end_step)
    grow_init_kind, grow_init_divisor = _parse_grow_init(
        grow_init, self._allow_gradient_grow_init)
    super().__init__(optimizer, name=name, **kwargs)
    self._grow_init_kind, self._grow_init_divisor = grow_init_kind, grow_init_divisor
    self.begin_step = int(begin_step)
    self.end_step = int(end_step)
    self.frequency = int(frequency)
    self.drop_fraction = float(drop_fraction)
    self.drop_fraction_anneal = drop_fraction_anneal
    self.grow_init = grow_init

  def _build_method_state(self):
    self.last_mask_update_step = self.add_variable(
        shape=(), dtype='int64', initializer=keras.initializers.Constant(-self.frequency),
        name='last_mask_update_step')
    self.last_drop_fraction = self.add_variable(
        shape=(), dtype='float32', initializer='zeros', name='last_drop_fraction')
    self._initial_kernels = []
    if self._grow_init_kind == 'initial_dist':
      if any(p.sparse for p in self._params):
        raise ValueError('grow_init=\'initial_dist\' samples the initial dense kernels, '
                         'which sparse execution does not keep; use another grow_init.')
      # Values of the initial distribution, sampled (shuffled) for grown connections.
      self._initial_kernels = [
          self.add_variable_from_reference(k, name='initial_value') for k in self._kernels]
      with tf.init_scope():
        for initial, kernel in zip(self._initial_kernels, self._kernels):
          initial.assign(kernel)

  # --- Schedule -----------------------------------------------------------------------

  def is_mask_update_iter(self, step):
    """True where begin <= step <= end (end < 0: no end) and last + frequency <= step."""
    return _is_update_step(step, self.begin_step, self.end_step, self.frequency,
                           self.last_mask_update_step)

  def get_drop_fraction(self, step):
    """The drop fraction of an update at `step`."""
    step = tf.cast(step, tf.float32)
    begin, end, fraction = float(self.begin_step), float(self.end_step), self.drop_fraction
    if self.drop_fraction_anneal == 'constant':
      return tf.constant(fraction, tf.float32)
    if self.drop_fraction_anneal == 'cosine':
      # As the original (tf.train.cosine_decay): the absolute step, over end - begin.
      decay_steps = end - begin
      progress = tf.minimum(step, decay_steps) / decay_steps
      return fraction * 0.5 * (1.0 + tf.cos(math.pi * progress))
    power = extract_number(self.drop_fraction_anneal)
    progress = tf.clip_by_value((step - begin) / (end - begin), 0.0, 1.0)
    return fraction * tf.pow(1.0 - progress, power)

  # --- Applying -----------------------------------------------------------------------

  def _updates_possible(self):
    """Whether the schedule has any update step; the first possible one is step 1.

    SET, Static and SNFS update after the weight step, on the incremented step; a fixed
    mask (e.g. begin 0, end 0: the `scratch` method) then never updates, and its steps
    need no update machinery at all.
    """
    return self.end_step < 0 or self.end_step >= max(self.begin_step, 1)

  def _apply_step(self, replicas, grads, variables):
    if not self._updates_possible():
      self._inner_apply(replicas, grads, variables)
      return
    # Before the weight update, as the original: the regularization term removed from
    # the gradient is that of the weights the gradient was computed at.
    self._before_weight_update(replicas, grads, variables)
    self._inner_apply(replicas, grads, variables)
    step = self._step()
    self._if_update_due(lambda: self.is_mask_update_iter(step),
                        lambda: self._update_masks(step, gradients=None))

  # The step an apply tests is the step after its weight update; RigL's, the step before.
  _tested_step_offset = 1

  def steps_without_update(self):
    if not self._updates_possible():
      return math.inf
    return _applies_before_update(self, self._tested_step_offset)

  def _before_weight_update(self, replicas, grads, variables):
    """Runs every step before the weight update."""
    del replicas, grads, variables  # SET and Static need nothing here.

  def _update_masks(self, step, gradients):
    drop_fraction = self.get_drop_fraction(step)
    changed = []
    for i in range(len(self._kernels)):
      gradient = None if gradients is None else gradients[i]
      changed.append(self._update_layer(i, step, drop_fraction, gradient))
    self.changed_connections.assign(tf.add_n(changed))
    self.last_drop_fraction.assign(drop_fraction)
    self.last_mask_update_step.assign(tf.cast(step, tf.int64))

  def _drop_score(self, index, step, kernel, mask):
    noise = tf.random.stateless_normal(
        kernel.shape, self._seed(index, _SEED_DROP, step), stddev=_DROP_NOISE_STD,
        dtype=kernel.dtype, alg=_RNG_ALG)
    return tf.abs(tf.cast(mask, kernel.dtype) * kernel) + noise

  def _grow_score(self, index, step, gradient, mask):
    del gradient, mask
    return tf.random.stateless_uniform(
        self._params[index].mask.shape, self._seed(index, _SEED_GROW, step), alg=_RNG_ALG)

  def _grow_tensor(self, index, step, gradient, kernel, mask):
    """The values newly grown connections start at."""
    kind, divisor = self._grow_init_kind, self._grow_init_divisor
    seed = self._seed(index, _SEED_GROW_INIT, step)
    if kind == 'zeros':
      return tf.zeros_like(kernel)
    # The spread of the weights the network uses (inactive ones never reach it).
    masked_kernel = kernel * tf.cast(mask, kernel.dtype)
    if kind == 'random_normal':
      values = tf.random.stateless_normal(
          kernel.shape, seed, stddev=tf.math.reduce_std(masked_kernel), dtype=kernel.dtype,
          alg=_RNG_ALG)
    elif kind == 'random_uniform':
      limit = tf.reduce_mean(tf.abs(masked_kernel))
      values = tf.random.stateless_uniform(
          kernel.shape, seed, minval=-limit, maxval=limit, dtype=kernel.dtype, alg=_RNG_ALG)
    elif kind == 'initial_dist':
      initial = tf.reshape(tf.convert_to_tensor(self._initial_kernels[index]), [-1])
      order = tf.argsort(tf.random.stateless_uniform(initial.shape, seed, alg=_RNG_ALG))
      values = tf.reshape(tf.gather(initial, order), kernel.shape)
    elif kind == 'grad_scale':
      values = tf.cast(gradient, kernel.dtype)
    else:  # grad_sign
      values = tf.sign(tf.cast(gradient, kernel.dtype))
    return values / divisor

  def _slot_reset_value(self, slot, gradient, shape):
    """The value of a grown connection's optimizer slot: what the slot started at."""
    del gradient
    return slot.initial_value(shape)

  def _update_layer(self, index, step, drop_fraction, gradient):
    """Drop the weakest and grow the best-scoring connections of one layer."""
    param = self._params[index]
    kernel, mask = param.dense_kernel(), param.dense_mask()
    shape = tuple(kernel.shape)
    old_mask = tf.reshape(mask, [-1]) > 0.5
    n_ones = tf.reduce_sum(tf.cast(old_mask, tf.int32))
    n_prune = tf.cast(tf.cast(n_ones, tf.float32) * drop_fraction, tf.int32)
    n_keep = n_ones - n_prune

    kept = selection.top_mask(
        tf.reshape(self._drop_score(index, step, kernel, mask), [-1]), n_keep)
    grow_score = tf.reshape(
        tf.cast(self._grow_score(index, step, gradient, mask), tf.float32), [-1])
    # Kept connections rank last, so the grown ones are all new or just dropped.
    grow_score = tf.where(kept, tf.constant(-np.inf, tf.float32), grow_score)
    grown = selection.top_mask(grow_score, n_prune)

    if self._reinit_when_same:
      new_connections = grown
    else:
      new_connections = tf.logical_and(grown, tf.logical_not(old_mask))
    new_connections_shaped = tf.reshape(new_connections, shape)
    grown_values = tf.where(new_connections_shaped,
                            self._grow_tensor(index, step, gradient, kernel, mask), kernel)
    slots = []
    for slot in self._slots[index]:
      reset = (grown_values if slot.name == _WEIGHT_AVERAGE_SLOT
               else self._slot_reset_value(slot, gradient, shape))
      value = param.dense_slot(slot.variable)
      slots.append((slot.variable, tf.where(new_connections_shaped,
                                            tf.cast(reset, value.dtype), value)))
    new_mask = tf.reshape(tf.cast(tf.logical_or(kept, grown), param.mask.dtype), shape)
    param.assign(grown_values, new_mask, slots)
    return tf.reduce_sum(tf.cast(
        tf.logical_and(grown, tf.logical_not(old_mask)), tf.float32))

  def get_config(self):
    config = super().get_config()
    config.update(begin_step=self.begin_step, end_step=self.end_step,
                  frequency=self.frequency, drop_fraction=self.drop_fraction,
                  drop_fraction_anneal=self.drop_fraction_anneal,
                  grow_init=self.grow_init)
    return config

  def sparsity_summaries(self):
    summaries = super().sparsity_summaries()
    summaries['drop_fraction'] = self.get_drop_fraction(self._step())
    return summaries


@keras.saving.register_keras_serializable(package='rigl')
class SparseStaticOptimizer(SparseSETOptimizer):
  """Static sparsity: the mask never changes.

  As in the original, each update still re-initialises (to `grow_init`) the weakest
  `drop_fraction` of the active weights and resets their slots; use drop_fraction=0
  for a plain fixed mask.
  """

  _reinit_when_same = True

  def __init__(self, optimizer, begin_step=0, end_step=-1, frequency=100,
               drop_fraction=0.1, drop_fraction_anneal='constant', grow_init='zeros',
               name='SparseStaticOptimizer', **kwargs):
    super().__init__(optimizer, begin_step, end_step, frequency, drop_fraction,
                     drop_fraction_anneal, grow_init, name=name, **kwargs)

  def _grow_score(self, index, step, gradient, mask):
    del index, step, gradient
    return mask


@keras.saving.register_keras_serializable(package='rigl')
class SparseMomentumOptimizer(SparseSETOptimizer):
  """Sparse Networks From Scratch (SNFS) without redistribution.

  Grows where an exponential moving average of the dense loss gradient is largest; the
  average (decay `momentum`, no zero-debias) is updated every step.
  """

  # Its gradient average is dense, every step.
  _supports_sparse_execution = False

  def __init__(self, optimizer, begin_step=0, end_step=-1, frequency=100,
               drop_fraction=0.1, drop_fraction_anneal='constant', grow_init='zeros',
               momentum=0.9, name='SparseMomentumOptimizer', **kwargs):
    _check_fraction('momentum', momentum)
    super().__init__(optimizer, begin_step, end_step, frequency, drop_fraction,
                     drop_fraction_anneal, grow_init, name=name, **kwargs)
    self.momentum = float(momentum)

  def _build_method_state(self):
    super()._build_method_state()
    self.gradient_averages = [
        self.add_variable_from_reference(k, name='gradient_average') for k in self._kernels]

  def _before_weight_update(self, replicas, grads, variables):
    for average, grad in zip(self.gradient_averages,
                             self._loss_gradients(replicas, grads, variables)):
      average.assign(self.momentum * tf.convert_to_tensor(average) +
                     (1.0 - self.momentum) * tf.cast(grad, average.dtype))

  def _grow_score(self, index, step, gradient, mask):
    del step, gradient, mask
    return tf.abs(tf.convert_to_tensor(self.gradient_averages[index]))

  def get_config(self):
    config = super().get_config()
    config['momentum'] = self.momentum
    return config


@keras.saving.register_keras_serializable(package='rigl')
class SparseRigLOptimizer(SparseSETOptimizer):
  """Rigging the Lottery: grow where the dense gradient is largest.

  On a mask-update step the update replaces the gradient step (no weight update, the
  step counter does not advance), as in the original. The grow score is the dense loss
  gradient of the current batch, all-reduced over replicas.

  Args:
    grow_init: also 'grad_scale[_d]' and 'grad_sign[_d]' (the gradient, or its sign,
      divided by d).
    initial_acc_scale: the momentum of a grown connection starts at `gradient * this`,
      in the units of TF1's momentum accumulator (`rigl.tf1_momentum`); with Keras'
      `SGD(momentum=...)`, whose velocity holds `-learning_rate * accumulator`, at the
      equivalent velocity. Other optimizers have no such slot and are refused unless
      this is 0.
  """

  _allow_gradient_grow_init = True

  def __init__(self, optimizer, begin_step=0, end_step=-1, frequency=100,
               drop_fraction=0.1, drop_fraction_anneal='constant', grow_init='zeros',
               initial_acc_scale=0.0, name='SparseRigLOptimizer', **kwargs):
    if isinstance(initial_acc_scale, bool) or not isinstance(
        initial_acc_scale, (int, float, np.floating)) or not math.isfinite(
            initial_acc_scale):
      raise ValueError(f'initial_acc_scale must be a finite number, got '
                       f'{initial_acc_scale!r}.')
    if initial_acc_scale and self._accumulator_slot_name(optimizer) is None:
      raise ValueError(
          f'initial_acc_scale={initial_acc_scale!r} sets the momentum accumulator of '
          f'grown connections, which {type(optimizer).__name__} does not have; use '
          'rigl.tf1_momentum.TF1MomentumOptimizer or keras.optimizers.SGD with momentum, '
          'or initial_acc_scale=0.')
    super().__init__(optimizer, begin_step, end_step, frequency, drop_fraction,
                     drop_fraction_anneal, grow_init, name=name, **kwargs)
    self.initial_acc_scale = float(initial_acc_scale)

  def _build_method_state(self):
    super()._build_method_state()
    def when_update_due(keep):
      self._if_update_due(lambda: self.is_mask_update_iter(self._step()), keep)

    for param in self._params:
      if param.sparse:
        param.layer.request_dense_gradient(when_update_due)

  @staticmethod
  def _accumulator_slot_name(optimizer):
    """The slot holding a momentum accumulator, or None."""
    if isinstance(optimizer, tf1_momentum.TF1MomentumOptimizer):
      return 'accumulator'
    if type(optimizer) is keras.optimizers.SGD and optimizer.momentum:  # pylint: disable=unidiomatic-typecheck
      return 'momentum'
    return None

  def _apply_step(self, replicas, grads, variables):
    step = self._step()

    def update_masks():
      self._update_masks(step, gradients=self._loss_gradients(replicas, grads, variables))

    self._if_update_due(lambda: self.is_mask_update_iter(step), update_masks,
                        lambda: self._inner_apply(replicas, grads, variables))

  _tested_step_offset = 0

  def _grow_score(self, index, step, gradient, mask):
    del index, step, mask
    return tf.abs(gradient)

  def _slot_reset_value(self, slot, gradient, shape):
    if not self.initial_acc_scale or slot.name != self._accumulator_slot_name(
        self.inner_optimizer):
      return super()._slot_reset_value(slot, gradient, shape)
    accumulator = tf.cast(gradient, slot.variable.dtype) * self.initial_acc_scale
    if isinstance(self.inner_optimizer, tf1_momentum.TF1MomentumOptimizer):
      return accumulator
    # Keras SGD: velocity = -learning_rate * accumulator.
    return -tf.cast(self.inner_optimizer.learning_rate, accumulator.dtype) * accumulator

  def get_config(self):
    config = super().get_config()
    config['initial_acc_scale'] = self.initial_acc_scale
    return config


def _magnitude_masks(scores_and_masks, sparsities):
  """Assigns each mask the top `n - floor(s * n)` positions of its score."""
  for (score, mask), sparsity in zip(scores_and_masks, sparsities):
    size = int(np.prod(mask.shape))
    keep = size - sparse_utils.get_n_zeros(size, sparsity)
    kept = selection.top_mask(tf.reshape(score, [-1]), keep)
    mask.assign(tf.reshape(tf.cast(kept, mask.dtype), mask.shape))


class _OneShotDistributionOptimizer(SparseOptimizerBase):
  """Base of SNIP and DNW: masks follow a sparsity distribution, set by a score."""

  def __init__(self, optimizer, default_sparsity, mask_init_method,
               custom_sparsity_map=None, name=None, **kwargs):
    if default_sparsity is None:
      raise ValueError(f'{type(self).__name__} needs a default_sparsity in [0, 1).')
    super().__init__(optimizer, default_sparsity=default_sparsity,
                     mask_init_method=mask_init_method,
                     custom_sparsity_map=custom_sparsity_map, name=name, **kwargs)

  def _build_method_state(self):
    sparsities = self.layer_sparsities()
    self._target_sparsities = [sparsities[sparse_utils.mask_name(m)] for m in self._masks]


@keras.saving.register_keras_serializable(package='rigl')
class SparseSnipOptimizer(_OneShotDistributionOptimizer):
  """SNIP: at its first step, keep the connections with the largest |gradient * weight|.

  The pruning step applies no gradient and does not advance the step counter, as in
  the original. Masks start dense. The original pruned at global step 0; this prunes at
  the first step it sees, also when it wraps an optimizer that has trained before.
  """

  def __init__(self, optimizer, default_sparsity, mask_init_method,
               custom_sparsity_map=None, name='SparseSnipOptimizer', **kwargs):
    super().__init__(optimizer, default_sparsity, mask_init_method,
                     custom_sparsity_map, name=name, **kwargs)

  def _build_method_state(self):
    super()._build_method_state()
    self.is_snipped = self.add_variable(
        shape=(), dtype='bool', initializer='zeros', name='is_snipped')

  def _initialize_masks(self):
    for mask in self._masks:
      mask.assign(tf.ones(mask.shape, mask.dtype))

  def _apply_step(self, replicas, grads, variables):
    def snip():
      # The original's score: the whole gradient, weight decay included.
      reduced = [replicas.reduce_sum(grads[i]) / self._loss_scale()
                 for i in self._kernel_positions(variables)]
      scores = [tf.abs(g * tf.convert_to_tensor(k)) for g, k in zip(reduced, self._kernels)]
      _magnitude_masks(zip(scores, self._masks), self._target_sparsities)
      self.is_snipped.assign(True)

    self._if_update_due(lambda: tf.logical_not(tf.convert_to_tensor(self.is_snipped)), snip,
                        lambda: self._inner_apply(replicas, grads, variables))

  def steps_without_update(self):
    if not self.built:
      return 0
    return math.inf if bool(self.is_snipped.numpy()) else 0

  def _kernel_positions(self, variables):
    positions = {self._masked_index[id(v)]: i for i, v in enumerate(variables)
                 if id(v) in self._masked_index}
    missing = [self._kernels[i].path for i in range(len(self._kernels))
               if i not in positions]
    if missing:
      raise ValueError(f'No gradients were given for the masked kernels {missing}.')
    return [positions[i] for i in range(len(self._kernels))]


@keras.saving.register_keras_serializable(package='rigl')
class SparseDNWOptimizer(_OneShotDistributionOptimizer):
  """Discovering Neural Wirings: dense straight-through updates, top-|w| masks.

  Every step applies the dense gradient (with respect to the masked kernel) to all
  weights, then keeps the largest-magnitude weights of each layer.
  """

  def __init__(self, optimizer, default_sparsity, mask_init_method,
               custom_sparsity_map=None, name='SparseDNWOptimizer', **kwargs):
    super().__init__(optimizer, default_sparsity, mask_init_method,
                     custom_sparsity_map, name=name, **kwargs)

  def _initialize_masks(self):
    self._update_masks()

  def _update_masks(self):
    scores = [tf.abs(tf.convert_to_tensor(k)) for k in self._kernels]
    _magnitude_masks(zip(scores, self._masks), self._target_sparsities)

  def _apply_step(self, replicas, grads, variables):
    self._inner_apply(replicas, grads, variables, straight_through=True)
    self._update_masks()


@keras.saving.register_keras_serializable(package='rigl')
class GradualPruningOptimizer(SparseOptimizerBase):
  """Gradual magnitude pruning (Zhu & Gupta, 2017), the original's `prune` method.

  Sparsity follows s(t) = target + (initial - target) * (1 - p)^exponent with
  p = clip((t - sparsity_function_begin_step) / (sparsity_function_end_step -
  sparsity_function_begin_step), 0, 1). Every `frequency` steps in [begin_step,
  end_step] (after the weight update), each mask keeps the weights whose magnitude
  reaches the k-th largest, k = max(1, round(n * (1 - s_layer))), where the threshold is
  smoothed by `threshold_decay`. Pruned weights get the original's gradient (only weight
  decay), since their magnitudes are ranked again at every update.

  Args:
    end_step: last pruning step; negative: prune forever, which needs
      `sparsity_function_end_step`.
    sparsity_function_begin_step, sparsity_function_end_step: where the schedule
      starts and reaches `target_sparsity`; default `begin_step` and `end_step`.
    weight_sparsity_map: `{layer name regex: sparsity}`; such a layer follows
      s(t) * sparsity / target_sparsity.
  """

  _straight_through_allowed = False

  def __init__(self, optimizer, begin_step=0, end_step=-1, frequency=10,
               target_sparsity=0.5, initial_sparsity=0.0,
               sparsity_function_begin_step=None, sparsity_function_end_step=None,
               sparsity_function_exponent=3.0, threshold_decay=0.0,
               weight_sparsity_map=None, name='GradualPruningOptimizer', **kwargs):
    _check_schedule(begin_step, end_step, frequency)
    sparse_utils.check_sparsity(target_sparsity, 'target_sparsity')
    sparse_utils.check_sparsity(initial_sparsity, 'initial_sparsity')
    weight_sparsity_map = dict(weight_sparsity_map or {})
    for pattern, sparsity in weight_sparsity_map.items():
      sparse_utils.check_sparsity(sparsity, f'weight_sparsity_map[{pattern!r}]')
      try:
        re.compile(pattern)
      except (re.error, TypeError) as error:
        raise ValueError(f'weight_sparsity_map key {pattern!r} is not a valid regular '
                         f'expression: {error}.') from error
    if weight_sparsity_map and not target_sparsity:
      raise ValueError(
          'weight_sparsity_map needs target_sparsity > 0: a mapped layer follows '
          f's(t) * sparsity / target_sparsity; got target_sparsity={target_sparsity!r}.')
    _check_fraction('threshold_decay', threshold_decay)
    if threshold_decay == 1:
      raise ValueError('threshold_decay must be in [0, 1), got 1 (the threshold would '
                       'never move).')
    if sparsity_function_end_step is None:
      if end_step < 0:
        raise ValueError(
            f'end_step={end_step} prunes forever, so the schedule needs '
            'sparsity_function_end_step, the step at which it reaches target_sparsity.')
      sparsity_function_end_step = end_step
    if sparsity_function_begin_step is None:
      sparsity_function_begin_step = begin_step
    _check_integer('sparsity_function_begin_step', sparsity_function_begin_step)
    _check_integer('sparsity_function_end_step', sparsity_function_end_step)
    if sparsity_function_end_step <= sparsity_function_begin_step:
      raise ValueError(
          'sparsity_function_end_step must be > sparsity_function_begin_step, got '
          f'{sparsity_function_end_step} and {sparsity_function_begin_step}.')
    super().__init__(optimizer, name=name, **kwargs)
    self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency
    self.target_sparsity = float(target_sparsity)
    self.initial_sparsity = float(initial_sparsity)
    self.sparsity_function_begin_step = sparsity_function_begin_step
    self.sparsity_function_end_step = sparsity_function_end_step
    self.sparsity_function_exponent = float(sparsity_function_exponent)
    self.threshold_decay = float(threshold_decay)
    self.weight_sparsity_map = weight_sparsity_map

  def _build_method_state(self):
    self.last_mask_update_step = self.add_variable(
        shape=(), dtype='int64', initializer='zeros', name='last_mask_update_step')
    self.thresholds = [
        self.add_variable(shape=(), dtype='float32', initializer='zeros',
                          name=f'threshold_{i}') for i in range(len(self._kernels))]
    self._sparsity_scales = [1.0] * len(self._layer_names)
    for pattern, sparsity in self.weight_sparsity_map.items():
      matched = [i for i, n in enumerate(self._layer_names) if re.fullmatch(pattern, n)]
      if not matched:
        raise ValueError(
            f'weight_sparsity_map key {pattern!r} matches no masked layer; masked '
            f'layers are {self._layer_names}.')
      for i in matched:
        self._sparsity_scales[i] = sparsity / self.target_sparsity

  def sparsity_at(self, step):
    """The scheduled overall sparsity s(step)."""
    begin = float(self.sparsity_function_begin_step)
    end = float(self.sparsity_function_end_step)
    progress = tf.clip_by_value((tf.cast(step, tf.float32) - begin) / (end - begin), 0., 1.)
    return pruning_schedule.gradual_sparsity(progress, self.initial_sparsity,
                                             self.target_sparsity,
                                             self.sparsity_function_exponent)

  def is_mask_update_iter(self, step):
    return _is_update_step(step, self.begin_step, self.end_step, self.frequency,
                           self.last_mask_update_step)

  def _prune(self, step):
    sparsity = self.sparsity_at(step)
    changed = []
    for kernel, mask, threshold, scale in zip(
        self._kernels, self._masks, self.thresholds, self._sparsity_scales):
      magnitudes = tf.reshape(tf.abs(tf.convert_to_tensor(kernel)), [-1])
      size = magnitudes.shape[0]
      # At least one weight stays, as contrib's k-th largest threshold keeps one.
      keep = tf.maximum(tf.cast(tf.round(size * (1.0 - sparsity * scale)), tf.int32), 1)
      sorted_magnitudes = tf.sort(magnitudes, direction='DESCENDING')
      new_threshold = tf.gather(sorted_magnitudes, keep - 1)
      smoothed = ((1.0 - self.threshold_decay) * new_threshold +
                  self.threshold_decay * tf.convert_to_tensor(threshold))
      threshold.assign(smoothed)
      old_mask = tf.convert_to_tensor(mask)
      new_mask = tf.cast(tf.abs(tf.convert_to_tensor(kernel)) >= smoothed, mask.dtype)
      changed.append(tf.reduce_sum(tf.abs(new_mask - old_mask)))
      mask.assign(new_mask)
    self.changed_connections.assign(tf.add_n(changed))
    self.last_mask_update_step.assign(tf.cast(step, tf.int64))

  def _apply_step(self, replicas, grads, variables):
    self._inner_apply(replicas, grads, variables)
    step = self._step()
    self._if_update_due(lambda: self.is_mask_update_iter(step), lambda: self._prune(step))

  def steps_without_update(self):
    return _applies_before_update(self, tested_step_offset=1)  # tested after the step

  def sparsity_summaries(self):
    summaries = super().sparsity_summaries()
    summaries['target_sparsity'] = self.sparsity_at(self._step())
    return summaries

  def get_config(self):
    config = super().get_config()
    config.update(
        begin_step=self.begin_step, end_step=self.end_step, frequency=self.frequency,
        target_sparsity=self.target_sparsity, initial_sparsity=self.initial_sparsity,
        sparsity_function_begin_step=self.sparsity_function_begin_step,
        sparsity_function_end_step=self.sparsity_function_end_step,
        sparsity_function_exponent=self.sparsity_function_exponent,
        threshold_decay=self.threshold_decay, weight_sparsity_map=self.weight_sparsity_map)
    return config
