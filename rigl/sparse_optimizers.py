"""Sparse optimizers: a Keras 3 optimizer wrapper that keeps masked kernels sparse.

`SparseOptimizerBase` wraps any Keras optimizer the way `keras.optimizers.
LossScaleOptimizer` does. When it is built it creates a 0/1 mask for every kernel that
`rigl.masking.sparsify_model` marked (or takes the mask of a `rigl.layers` masked layer),
keeps the inactive weights at exactly zero, and on mask-update steps runs the method's
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

**Inactive weights are zero.** The model's own forward pass runs on its kernels, so
the wrapper keeps them sparse: the inner optimizer gets the masked gradient (the
original's `mask * dL/dw` plus, as in the original, the regularizer's gradient of the
active weights), every mask change zeroes the dropped weights and resets the optimizer
slots of dropped and grown connections, and where the inner optimizer could still move a
weight whose gradient is zero (one that mixes the entries of a kernel, such as Muon, or
one with an exponential moving average or weight constraints) the kernels are multiplied
by their masks after its step. At the sparse point the ordinary gradient of a kernel is
the dense gradient with respect to the masked kernel: RigL's grow score.

**Scores** use the loss gradient all-reduced over replicas, without the kernels'
regularization term (the original scored `dL/d(masked weights)`), unscaled by the inner
optimizer's `loss_scale_factor`; with the inner optimizer's `gradient_accumulation_steps`
they use the accumulated gradient, on the step that applies it.

Without a distribution strategy the step runs directly; under one it runs in
cross-replica context (entered through `merge_call`, as `LossScaleOptimizer` does), so
scores use the all-reduced gradient and masks are computed once and written to every
replica.
"""

import contextlib
import dataclasses
import math
import re

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from keras.src.utils import tracking

from rigl import masking
from rigl import pruning_schedule
from rigl import sparse_layers
from rigl import sparse_utils
from rigl import structure as structures
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

# Optimizers whose update of a weight reads only that weight's gradient and slots: with a
# zero gradient and slots at their initial values, an inactive weight stays at zero.
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


def check_sparse_execution_structure(structure):
  """Sparse execution (`rigl.sparse_layers.SparseDense`) trains unstructured masks only."""
  if structure != structures.UNSTRUCTURED:
    raise ValueError(
        f'Sparse execution (rigl.sparse_layers.SparseDense) trains unstructured masks '
        f'only, not structure={structure!r}: its layers keep just the nnz largest '
        'dense-gradient entries, too few for a grow step within every neuron or group; '
        'train structured masks with masked layers.')


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
  """A masked kernel and its mask, as the drop-and-grow update reads and writes them."""

  sparse = False

  def __init__(self, kernel, mask, spec):
    self.variable, self.mask, self.spec = kernel, mask, spec
    self.key, self.erk_shape, self.matrix = spec.key, spec.erk_shape, spec.matrix
    self.shape = tuple(kernel.shape)

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
    self.key, self.erk_shape = layer.name, layer.kernel_shape
    self.shape = tuple(layer.kernel_shape)
    self.matrix = masking.MatrixView((0, 1), *self.shape)

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
  """Wraps a Keras optimizer; owns the masks of a model's masked kernels.

  Subclasses implement `_apply_step(replicas, grads, variables)`, which runs once per
  step with the (per-replica) `grads`; `replicas.run` applies a function per replica,
  `replicas.reduce_sum` all-reduces a per-replica value.

  Args:
    optimizer: the inner `keras.optimizers.Optimizer` that updates the weights; built or
      not (a built one keeps its state, e.g. after dense pre-training). Its
      `gradient_accumulation_steps` are followed: mask updates use the accumulated
      gradient, on the step that applies it.
    default_sparsity: if not None, `build` draws the masks at this overall sparsity,
      distributed by `mask_init_method` (original flag names) — but only if every mask
      is still all ones: masks of a checkpoint restored later, of a `.keras` file, of a
      `sparsify_model(..., masks='from_weights')` model, or set by hand are kept.
      `initialize_masks()` draws them on request.
    mask_init_method: 'random' (uniform), 'erdos_renyi', 'erdos_renyi_kernel' or 'str'.
    custom_sparsity_map: `{name: sparsity}` for weights outside the budget; a name is a
      weight's key (`rigl.masking.KernelSpec.key`), its path, the name of a layer above
      it, or a glob pattern on keys and paths.
    erk_power_scale: exponent of the ERK densities (>= 0).
    stateless_seed_offset: user seed (an integer >= 0); every random draw derives from
      it, the weight's index and the step, so replicas, workers and restarts draw the
      same numbers.
    regularization_in_gradients: whether the gradients given to `apply` include the
      gradients of the kernels' regularization losses, as in `model.fit` and in custom
      loops that add `model.losses` to the loss. Scores subtract that term.
    structure: how scores become masks (`rigl.structure`): 'unstructured' (the
      paper's), 'constant_fan_in' (every active output neuron of a kernel's matrix view
      has the same number of inputs; SRigL) or 'N:M' (at most N of every M consecutive
      inputs of each output neuron, e.g. '2:4'). Every mask the method draws, keeps,
      grows or prunes obeys it; a layer's sparsity is rounded to it (`target_sparsities`).
  """

  def __init__(self, optimizer, default_sparsity=None, mask_init_method='random',
               custom_sparsity_map=None, erk_power_scale=1.0, stateless_seed_offset=0,
               regularization_in_gradients=True, structure=structures.UNSTRUCTURED,
               name='SparseOptimizer', masked_kernels=None, **kwargs):
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
    structures.check(structure)
    super().__init__(learning_rate=0.0, name=name)
    self.inner_optimizer = optimizer
    self.default_sparsity = default_sparsity
    self.mask_init_method = mask_init_method
    self.custom_sparsity_map = dict(custom_sparsity_map or {})
    self.erk_power_scale = sparse_utils.check_erk_power_scale(erk_power_scale)
    self.stateless_seed_offset = int(stateless_seed_offset)
    self.regularization_in_gradients = bool(regularization_in_gradients)
    self.structure = structure
    # The masked kernels of the model this optimizer was built for, by position among
    # its trainable variables, from a saved configuration (`.keras` files): a model
    # rebuilt from its configuration has lost its `sparsify_model` marks.
    self._configured_kernels = [
        (int(entry['index']), masking.KernelSpec.from_config(entry['spec']))
        for entry in masked_kernels or []]

  # --- Building ---------------------------------------------------------------------

  @tracking.no_automatic_dependency_tracking
  def build(self, var_list):
    if self.built:
      return  # a LossScaleOptimizer builds its inner optimizer again
    var_list = list(var_list)
    specs = self._kernel_specs(var_list)
    self._params, self._masked_index, self._kernel_indices = [], {}, []
    for index, var in enumerate(var_list):
      sparse_layer = sparse_layers.get_sparse_layer(var)
      if sparse_layer is None and index not in specs:
        continue
      self._masked_index[id(var)] = len(self._params)
      self._kernel_indices.append(index)
      if sparse_layer is not None:
        self._params.append(_SparseParameter(sparse_layer))
        continue
      mask = masking.get_mask(var)
      if mask is None:
        # `model.fit` builds the optimizer while tracing its first step; the masks are
        # read on the host right after (to draw or check them), so they are made there.
        with tf.init_scope():
          mask = self.add_variable(shape=var.shape, dtype=var.dtype, initializer='ones',
                                   name='mask')
        masking.attach_mask(var, mask)
      self._params.append(_MaskedParameter(var, mask, specs[index]))
    self._kernels = [p.variable for p in self._params]
    self._masks = [p.mask for p in self._params]
    self._keys = [p.key for p in self._params]
    repeated = sorted({k for k in self._keys if self._keys.count(k) > 1})
    if repeated:
      raise ValueError(
          f'Masked weights must have distinct names, but {repeated} name several '
          '(masked layers of one name in nested models); rigl.masking.sparsify_model('
          'model) names each weight by the layers above it.')
    self._all_weights = var_list
    if any(p.sparse for p in self._params):
      self._check_sparse_execution()
    self._check_accumulation()
    self._custom_sparsities = self._resolve_custom_map()
    self._slots = self._find_inner_slots(var_list)
    inner = self.inner_optimizer
    # Masked gradients and reset slots keep an inactive weight at zero under an
    # elementwise optimizer; the others get the kernels re-masked after their step.
    self._remask_after_step = not (
        isinstance(inner, _ELEMENTWISE_OPTIMIZERS) and not inner.use_ema and
        all(getattr(k, 'constraint', None) is None for k in self._kernels))
    self.changed_connections = self.add_variable(
        shape=(), dtype='float32', initializer='zeros', name='changed_connections')
    self._build_method_state()
    self._structures = self._layer_structures()
    super().build(var_list)
    # `model.fit` may build the optimizer while tracing its first step; the masks must
    # be written once, now, and not on every step of the traced function.
    with tf.init_scope():
      self._start_masks()

  def _kernel_specs(self, var_list):
    """`{position in var_list: KernelSpec}` of the weights to mask."""
    specs = {i: masking.kernel_spec(v) for i, v in enumerate(var_list)
             if masking.kernel_spec(v) is not None}
    if specs or any(sparse_layers.get_sparse_layer(v) for v in var_list):
      return specs
    if not self._configured_kernels:
      # A model compiled and saved before its optimizer was built has lost its marks.
      specs = {i: masking.spec_by_the_rule(v) for i, v in enumerate(var_list)
               if masking.spec_by_the_rule(v) is not None}
      if not specs:
        raise ValueError(
            f'{type(self).__name__} found no weights to mask among the {len(var_list)} '
            'variables it was given; mark them first with '
            'rigl.masking.sparsify_model(model) (or build the model from '
            'rigl.layers.MaskedDense/MaskedConv2D/MaskedDepthwiseConv2D).')
      logging.warning(
          '%s was built for a model that rigl.masking.sparsify_model did not mark; it '
          'masks the %d weights the rule picks. Mark the model before compiling it to '
          'choose others.', type(self).__name__, len(specs))
      for index, spec in specs.items():
        masking.mark(var_list[index], spec)
      return specs
    for index, spec in self._configured_kernels:
      if index >= len(var_list) or tuple(var_list[index].shape) != spec.shape:
        found = (tuple(var_list[index].shape) if index < len(var_list) else 'nothing')
        raise ValueError(
            f'This {type(self).__name__} was saved with {spec.path} of shape {spec.shape} '
            f'as trainable variable {index}, but the model it is built for has {found} '
            'there; it belongs to another model.')
      spec = dataclasses.replace(spec, path=var_list[index].path)
      masking.mark(var_list[index], spec)
      specs[index] = spec
    return specs

  def _keys_named(self, name, argument):
    """The keys of the masked weights that an entry of `argument` names (a key, path,
    layer name or glob); raises if it names none."""
    keys = masking.keys_matching(name, [(p.key, p.variable.path) for p in self._params])
    if not keys:
      raise ValueError(f'{argument} entry {name!r} names no masked weight; masked are '
                       f'{list(self._keys)}.')
    return keys

  def _resolve_custom_map(self):
    """`custom_sparsity_map` keyed by the weights' keys."""
    resolved = {}
    for name, sparsity in self.custom_sparsity_map.items():
      for key in self._keys_named(name, 'custom_sparsity_map'):
        if resolved.get(key, sparsity) != sparsity:
          raise ValueError(f'custom_sparsity_map gives {key!r} two sparsities '
                           f'({resolved[key]} and {sparsity}).')
        resolved[key] = sparsity
    return resolved

  def _check_accumulation(self):
    if self._accumulation_steps and tf.distribute.get_strategy().num_replicas_in_sync > 1:
      raise ValueError(
          f'The inner optimizer accumulates gradients over {self._accumulation_steps} '
          'steps; sparse optimizers follow gradient accumulation on one replica only, '
          'not under a distribution strategy.')

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
    if self._accumulation_steps:
      raise ValueError('Sparse execution (rigl.sparse_layers.SparseDense) does not '
                       'support gradient accumulation.')
    check_sparse_execution_structure(self.structure)

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
      # Gradient accumulators are not state of a weight: a grown weight keeps the
      # gradient accumulated in the current cycle.
      slots.append([_Slot(slot, name, init) for name, init, slot in specs
                    if tuple(slot.shape) == tuple(kernel.shape) and
                    name != 'gradient_accumulator'])
    return slots

  def _build_method_state(self):
    """Creates the method's own variables."""

  def _distribution_sparsities(self):
    """`{weight key: sparsity}` the method trains the weights to, or None if unknown."""
    return None if self.default_sparsity is None else self.layer_sparsities()

  def _ablation_thresholds(self):
    """Constant fan-in's neuron-ablation threshold of each masked weight; 0: none."""
    return [0.0] * len(self._params)

  def _layer_structures(self):
    """Each masked weight's selection rules under `structure` (`rigl.structure`)."""
    sparsities = self._distribution_sparsities()
    return [structures.for_layer(
        self.structure, p.key, p.shape, p.matrix,
        None if sparsities is None else sparsities[p.key], threshold)
            for p, threshold in zip(self._params, self._ablation_thresholds())]

  def _start_masks(self):
    """Fills new masks (from the weights, or drawn) and zeroes the inactive weights."""
    masked = [p for p in self._params if not p.sparse]
    for param in masked:
      if param.spec.from_weights and _all_ones(param.mask):
        param.mask.assign(tf.cast(tf.not_equal(param.variable, 0), param.mask.dtype))
    if self._params and all(not p.sparse and _all_ones(p.mask) for p in self._params):
      self._warn_about_sparse_weights(masked)
      self._initialize_masks()
    for param in masked:
      masking.apply_mask(param.variable)

  def _warn_about_sparse_weights(self, params):
    for param in params:
      zeros = float(tf.reduce_mean(tf.cast(tf.equal(param.variable, 0), tf.float32)))
      if zeros >= 0.5 and self.default_sparsity is not None:
        logging.warning(
            '%s is already %.0f%% zeros; the new masks replace its sparsity pattern. '
            'To keep it (a model from a sparse run), mark the model with '
            "rigl.masking.sparsify_model(model, masks='from_weights').",
            param.variable.path, 100 * zeros)

  def initialize_masks(self):
    """Draws the masks from `default_sparsity` and `mask_init_method`, now, and zeroes
    the weights that become inactive."""
    self._require_built()
    if self.default_sparsity is None:
      raise ValueError(f'{type(self).__name__} has no default_sparsity to draw masks at.')
    self._initialize_masks()
    for param in self._params:
      if not param.sparse:
        masking.apply_mask(param.variable)

  def _initialize_masks(self):
    if self.default_sparsity is None:
      return
    random_state = np.random.RandomState(self.stateless_seed_offset)
    for param, rules in zip(self._params, self._structures):
      param.mask.assign(tf.cast(rules.random_mask(random_state), param.mask.dtype))

  def _require_built(self):
    if getattr(self, '_masks', None) is None:
      raise ValueError(
          f'{type(self).__name__} is not built yet, so it has no masks; build the '
          'optimizer first: optimizer.build(model.trainable_variables), or train a step.')

  def layer_sparsities(self, method=None, default_sparsity=None):
    """`{weight key: target sparsity}` of the configured distribution."""
    self._require_built()
    named = [sparse_utils.NamedShape(p.key, p.erk_shape) for p in self._params]
    return sparse_utils.get_sparsities(
        named, method or self.mask_init_method,
        self.default_sparsity if default_sparsity is None else default_sparsity,
        self._custom_sparsities, erk_power_scale=self.erk_power_scale,
        extract_name_fn=lambda name: name)

  def target_sparsities(self):
    """`{weight key: the sparsity this method trains it to}`: the distribution's,
    rounded to the structure (exactly the sparsity of the masks it draws); empty if it
    sets none."""
    self._require_built()
    return {key: rules.target_sparsity for key, rules in zip(self._keys, self._structures)
            if rules.target_sparsity is not None}

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
    if self.built:
      self._remask()  # an EMA copied into the kernels has inactive entries

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

  @property
  def keys(self):
    """The names of the masked weights (`rigl.masking.KernelSpec.key`), in order."""
    self._require_built()
    return list(self._keys)

  # --- Gradient accumulation ----------------------------------------------------------

  @property
  def _accumulation_steps(self):
    return self.inner_optimizer.gradient_accumulation_steps or 0

  def _applies_now(self):
    """Whether this step's apply updates the weights (always, unless accumulating)."""
    steps = self._accumulation_steps
    if not steps:
      return tf.constant(True)
    return tf.equal((self.inner_optimizer._iterations + 1) % steps, 0)  # pylint: disable=protected-access

  def _just_applied(self):
    """After the inner step: whether it updated the weights."""
    steps = self._accumulation_steps
    if not steps:
      return tf.constant(True)
    return tf.equal(self.inner_optimizer._iterations % steps, 0)  # pylint: disable=protected-access

  def _consume_accumulated_cycle(self):
    """After an update that replaces the weight step (RigL, SNIP) with accumulation: the
    accumulated gradients are spent, and the step counter stays where it was."""
    steps = self._accumulation_steps
    if steps:
      inner = self.inner_optimizer
      inner._backend_reset_gradient_accumulators()  # pylint: disable=protected-access
      inner._iterations.assign_sub(steps - 1)  # pylint: disable=protected-access

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

  def _inner_apply(self, replicas, grads, variables, mask_gradients=True, remask=True):
    """The inner optimizer's step, per replica, on the masked gradients."""

    def replica_apply(grads, variables):
      if mask_gradients and self._accumulation_steps:
        grads = self._accumulated_masking(grads, variables)
      elif mask_gradients:
        grads = [self._masked_gradient(g, v) for g, v in zip(grads, variables)]
      # The inner all-reduce's custom gradient wants all its inputs from one graph: a
      # tf.cond branch, when this runs in one.
      grads = [tf.identity(g) if isinstance(g, tf.Tensor) else g for g in grads]
      self.inner_optimizer.apply(grads, variables)

    replicas.run(replica_apply, (grads, variables))
    if remask and self._remask_after_step:
      self._remask()

  def _remask(self):
    for param in self._params:
      if not param.sparse:
        masking.apply_mask(param.variable)

  def _accumulated_masking(self, grads, variables):
    """With gradient accumulation, the inner optimizer accumulates dense gradients
    (RigL's and SNFS's scores need them), and the step that applies them masks the
    accumulated sum first."""
    inner = self.inner_optimizer
    applies = self._applies_now()
    masked = []
    for grad, var in zip(grads, variables):
      index = self._masked_index.get(id(var))
      if grad is None or index is None or self._params[index].sparse:
        masked.append(grad)
        continue
      grad = tf.convert_to_tensor(grad)
      mask = tf.cast(self._masks[index], grad.dtype)
      accumulator = inner._accumulated_gradients[inner._get_variable_index(var)]  # pylint: disable=protected-access

      def mask_accumulator(accumulator=accumulator, mask=mask):
        accumulator.assign(accumulator * mask)

      tf.cond(applies, mask_accumulator, lambda: None)
      masked.append(tf.where(applies, grad * mask, grad))
    return masked

  def _masked_gradient(self, grad, variable):
    """`mask * grad` for a masked kernel (also an embedding's `IndexedSlices`)."""
    index = self._masked_index.get(id(variable))
    if grad is None or index is None or self._params[index].sparse:
      return grad  # a sparse layer's gradient is already that of its active weights
    mask = self._masks[index]
    if isinstance(grad, tf.IndexedSlices):
      rows = tf.cast(tf.gather(mask, grad.indices), grad.values.dtype)
      return tf.IndexedSlices(grad.values * rows, grad.indices, grad.dense_shape)
    return grad * tf.cast(mask, grad.dtype)

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

  def _regularization_share(self, index, dtype):
    """This replica's share of kernel `index`'s regularization gradient as it reaches
    `apply`: Keras divides the loss by the number of replicas, and the inner optimizer's
    scale_loss multiplied it."""
    regularization = self._regularization_gradient(index)
    if regularization is None:
      return None
    return tf.cast(regularization, dtype) * (
        self._loss_scale() / tf.distribute.get_strategy().num_replicas_in_sync)

  def _loss_gradients(self, replicas, grads, variables, without_regularization=True):
    """All-reduced loss gradients of the masked kernels, in kernel order.

    The mean gradient of the loss over the global batch (Keras scales each replica's
    loss by 1/replicas) — with gradient accumulation, over the accumulated batches —
    unscaled by the inner optimizer's loss_scale_factor, without the kernels'
    regularization term unless `without_regularization` is False.
    """
    reduced = [None] * len(self._kernels)
    for grad, var in zip(grads, variables):
      index = self._masked_index.get(id(var))
      if index is None:
        continue
      if grad is None:
        raise ValueError(f'Masked kernel {var.path} received no gradient.')
      if self._params[index].sparse:
        # The layer kept the dense loss gradient's candidates in its backward pass.
        reduced[index] = (self._params[index].layer.dense_gradient_from_candidates() /
                          self._loss_scale())
        continue
      if self._accumulation_steps:
        inner = self.inner_optimizer
        accumulated = inner._accumulated_gradients[inner._get_variable_index(var)]  # pylint: disable=protected-access
        grad = (grad + tf.convert_to_tensor(accumulated)) / self._accumulation_steps
      gradient = tf.convert_to_tensor(replicas.reduce_sum(grad)) / self._loss_scale()
      regularization = (self._regularization_gradient(index) if without_regularization
                        else None)
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

  def _reset_slots(self, index, positions, grown=None, grown_values=None):
    """`[(slot variable, value)]`: the slots of kernel `index` back at their initial
    values at `positions` (a dense bool tensor), or at `grown_values[slot name]` where
    `grown` is true and the slot is named there."""
    param = self._params[index]
    updates = []
    for slot in self._slots[index]:
      value = param.dense_slot(slot.variable)
      reset = tf.where(positions, tf.cast(slot.initial_value(param.shape), value.dtype),
                       value)
      if grown is not None and slot.name in (grown_values or {}):
        reset = tf.where(grown, tf.cast(grown_values[slot.name], value.dtype), reset)
      updates.append((slot.variable, reset))
    return updates

  # --- Summaries ----------------------------------------------------------------------

  def sparsity_summaries(self):
    """Scalars to watch: the sparsity of the masked weights, of all the weights, of each
    masked weight, and the connections the last mask update changed."""
    self._require_built()
    ones = [tf.reduce_sum(tf.cast(m, tf.float32)) for m in self._masks]
    sizes = [float(np.prod(m.shape)) for m in self._masks]
    summaries = {'sparsity/masked_weights': 1.0 - tf.add_n(ones) / sum(sizes)}
    nonzero, total = [], 0.0
    for var in self._all_weights:
      index = self._masked_index.get(id(var))
      if index is not None and self._params[index].sparse:
        value = self._params[index].dense_kernel()
      else:
        value = tf.convert_to_tensor(var)
      nonzero.append(tf.cast(tf.math.count_nonzero(value), tf.float32))
      total += float(np.prod(value.shape))
    summaries['sparsity/all_weights'] = 1.0 - tf.add_n(nonzero) / total
    for key, count, size in zip(self._keys, ones, sizes):
      summaries[f'sparsity/{key}'] = 1.0 - count / size
    for key, mask, rules in zip(self._keys, self._masks, self._structures):
      for name, value in rules.summaries(mask).items():
        summaries[f'{name}/{key}'] = value
    summaries['mask_update/changed_connections'] = tf.convert_to_tensor(
        self.changed_connections)
    return summaries

  def get_config(self):
    config = {
        'name': self.name,
        'optimizer': keras.saving.serialize_keras_object(self.inner_optimizer),
        'default_sparsity': self.default_sparsity,
        'mask_init_method': self.mask_init_method,
        'custom_sparsity_map': self.custom_sparsity_map,
        'erk_power_scale': self.erk_power_scale,
        'stateless_seed_offset': self.stateless_seed_offset,
        'regularization_in_gradients': self.regularization_in_gradients,
        'structure': self.structure,
    }
    if self.built:
      config['masked_kernels'] = [
          {'index': index, 'spec': param.spec.get_config()}
          for index, param in zip(self._kernel_indices, self._params) if not param.sparse]
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config['optimizer'] = keras.saving.deserialize_keras_object(
        config['optimizer'], custom_objects=custom_objects)
    return cls(**config)


def _all_ones(mask):
  return bool(tf.reduce_all(tf.equal(mask, 1)))


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
    ablation_threshold: with structure='constant_fan_in', SRigL's gamma_sal: at each
      update a neuron with fewer salient weights than this fraction of its constant
      fan-in is ablated, and its weights go to the other neurons of the layer
      (`rigl.structure`); 0: no ablation. Default 0.3 under constant fan-in.
    never_ablate: weights (keys, paths, layer names or globs, as in
      `custom_sparsity_map`) whose neurons are never ablated; default: the last masked
      weight, the output layer of Sequential and functional models (SRigL never
      ablates the last layer). A model whose output layer is not its last masked kernel
      names it here.
    **kwargs: mask initialisation, seed and structure arguments of
      `SparseOptimizerBase`.
  """

  _reinit_when_same = False
  _allow_gradient_grow_init = False
  _supports_sparse_execution = True
  # Whether updates may move connections, and so ablate neurons.
  _rewires = True

  def __init__(self, optimizer, begin_step=0, end_step=-1, frequency=100,
               drop_fraction=0.1, drop_fraction_anneal='constant', grow_init='zeros',
               ablation_threshold=None, never_ablate=None, name='SparseSETOptimizer',
               **kwargs):
    _check_schedule(begin_step, end_step, frequency)
    _check_fraction('drop_fraction', drop_fraction)
    _check_anneal(drop_fraction_anneal, begin_step, end_step)
    grow_init_kind, grow_init_divisor = _parse_grow_init(
        grow_init, self._allow_gradient_grow_init)
    super().__init__(optimizer, name=name, **kwargs)
    self.ablation_threshold = self._checked_ablation_threshold(ablation_threshold)
    if isinstance(never_ablate, str):
      never_ablate = [never_ablate]
    if never_ablate is not None and (
        not all(isinstance(name, str) for name in never_ablate) or
        not self.ablation_threshold):
      raise ValueError(
          f'never_ablate names the weights kept out of neuron ablation (a list of '
          f'weight names), which needs structure={structures.CONSTANT_FAN_IN!r} and '
          f'ablation_threshold > 0; got never_ablate={never_ablate!r} with '
          f'structure={self.structure!r}, ablation_threshold={self.ablation_threshold}.')
    self.never_ablate = None if never_ablate is None else list(never_ablate)
    self._grow_init_kind, self._grow_init_divisor = grow_init_kind, grow_init_divisor
    self.begin_step = int(begin_step)
    self.end_step = int(end_step)
    self.frequency = int(frequency)
    self.drop_fraction = float(drop_fraction)
    self.drop_fraction_anneal = drop_fraction_anneal
    self.grow_init = grow_init

  def _checked_ablation_threshold(self, ablation_threshold):
    ablates = self._rewires and self.structure == structures.CONSTANT_FAN_IN
    if ablation_threshold is None:
      return structures.DEFAULT_ABLATION_THRESHOLD if ablates else 0.0
    ablation_threshold = structures.check_ablation_threshold(ablation_threshold)
    if ablation_threshold and not ablates:
      raise ValueError(
          f'ablation_threshold={ablation_threshold} ablates neurons of constant fan-in '
          f'masks that move; {type(self).__name__} with structure={self.structure!r} '
          'has none: leave it out or set it to 0.')
    return ablation_threshold

  def _ablation_thresholds(self):
    if not self.ablation_threshold:
      return super()._ablation_thresholds()
    if self.never_ablate is None:
      never_ablated = {self._keys[-1]}
    else:
      never_ablated = {key for name in self.never_ablate
                       for key in self._keys_named(name, 'never_ablate')}
    return [0.0 if key in never_ablated else self.ablation_threshold for key in self._keys]

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
    """Whether the schedule has any update step.

    SET, Static and SNFS update after the weight step, on the incremented step, so
    their first possible update is at step 1; a fixed mask (e.g. begin 0, end 0: the
    `scratch` method) then never updates, and its steps need no update machinery at
    all. RigL updates on the step itself, so step 0 counts.
    """
    return self.end_step < 0 or self.end_step >= max(self.begin_step,
                                                     self._tested_step_offset)

  def _apply_step(self, replicas, grads, variables):
    if not self._updates_possible():
      self._inner_apply(replicas, grads, variables)
      return
    # Before the weight update, as the original: the regularization term removed from
    # the gradient is that of the weights the gradient was computed at.
    self._before_weight_update(replicas, grads, variables)
    self._inner_apply(replicas, grads, variables)
    step = self._step()
    self._if_update_due(
        lambda: tf.logical_and(self.is_mask_update_iter(step), self._just_applied()),
        lambda: self._update_masks(step, gradients=None))

  # The step an apply tests is the step after its weight update; RigL's, the step before.
  _tested_step_offset = 1

  def steps_without_update(self):
    if not self._updates_possible():
      return math.inf
    if self._accumulation_steps:
      return 0  # the schedule counts weight updates, not applies
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
    # Only active connections can be kept: in the original, an inactive position whose
    # noise beat a weight smaller than the noise (a connection just grown at zero) was
    # kept, switching connections on even at drop fraction 0.
    return tf.where(tf.cast(mask, tf.bool), tf.abs(kernel) + noise,
                    tf.constant(-np.inf, kernel.dtype))

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
    # The spread of the active weights (the inactive ones are zero; the original read
    # its raw variable, whose inactive entries decayed towards zero unseen).
    active = tf.cast(mask, kernel.dtype)
    count = tf.maximum(tf.reduce_sum(active), 1.0)
    mean = tf.reduce_sum(kernel * active) / count
    if kind == 'random_normal':
      stddev = tf.sqrt(tf.reduce_sum(active * tf.square(kernel - mean)) / count)
      values = tf.random.stateless_normal(
          kernel.shape, seed, stddev=stddev, dtype=kernel.dtype, alg=_RNG_ALG)
    elif kind == 'random_uniform':
      limit = tf.reduce_sum(tf.abs(kernel) * active) / count
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

  def _grown_slot_values(self, gradient, grown_values, shape):
    """`{slot name: value}` of a grown connection's optimizer slots where they do not
    start at the slot's initial value."""
    del gradient, shape
    return {_WEIGHT_AVERAGE_SLOT: grown_values}

  def _update_layer(self, index, step, drop_fraction, gradient):
    """Drop the weakest and grow the best-scoring connections of one layer."""
    param = self._params[index]
    kernel, mask = param.dense_kernel(), param.dense_mask()
    old_mask = mask > 0.5
    n_ones = tf.reduce_sum(tf.cast(old_mask, tf.int32))
    n_prune = tf.cast(tf.cast(n_ones, tf.float32) * drop_fraction, tf.int32)
    n_keep = n_ones - n_prune

    kept, grown = self._structures[index].drop_and_grow(
        self._drop_score(index, step, kernel, mask),
        tf.cast(self._grow_score(index, step, gradient, mask), tf.float32),
        n_keep, n_prune)

    if self._reinit_when_same:
      new_connections = grown
    else:
      new_connections = tf.logical_and(grown, tf.logical_not(old_mask))
    active = tf.logical_or(kept, grown)
    grow_values = self._grow_tensor(index, step, gradient, kernel, mask)
    # Dropped weights become zero; grown ones start at their grow value.
    values = tf.where(new_connections, grow_values,
                      tf.where(active, kernel, tf.zeros_like(kernel)))
    # Slots restart for grown and for dropped connections.
    dropped = tf.logical_and(old_mask, tf.logical_not(active))
    slots = self._reset_slots(index, tf.logical_or(new_connections, dropped),
                              new_connections,
                              self._grown_slot_values(gradient, grow_values, param.shape))
    param.assign(values, tf.cast(active, param.mask.dtype), slots)
    return tf.reduce_sum(tf.cast(
        tf.logical_and(grown, tf.logical_not(old_mask)), tf.float32))

  def get_config(self):
    config = super().get_config()
    config.update(begin_step=self.begin_step, end_step=self.end_step,
                  frequency=self.frequency, drop_fraction=self.drop_fraction,
                  drop_fraction_anneal=self.drop_fraction_anneal,
                  grow_init=self.grow_init, ablation_threshold=self.ablation_threshold,
                  never_ablate=self.never_ablate)
    return config

  def sparsity_summaries(self):
    """Also `drop_fraction`: that of the update at this step, 0 on other steps (the
    original's summary), and `mask_update/drop_fraction`: that of the last update."""
    summaries = super().sparsity_summaries()
    summaries['drop_fraction'] = tf.where(
        tf.equal(self.last_mask_update_step, tf.cast(self._step(), tf.int64)),
        tf.convert_to_tensor(self.last_drop_fraction), 0.0)
    summaries['mask_update/drop_fraction'] = tf.convert_to_tensor(self.last_drop_fraction)
    return summaries


@keras.saving.register_keras_serializable(package='rigl')
class SparseStaticOptimizer(SparseSETOptimizer):
  """Static sparsity: the mask never changes.

  As in the original, each update still re-initialises (to `grow_init`) the weakest
  `drop_fraction` of the active weights and resets their slots; use drop_fraction=0
  for a plain fixed mask.
  """

  _reinit_when_same = True
  _rewires = False

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
    def average():
      for average, grad in zip(self.gradient_averages,
                               self._loss_gradients(replicas, grads, variables)):
        average.assign(self.momentum * tf.convert_to_tensor(average) +
                       (1.0 - self.momentum) * tf.cast(grad, average.dtype))

    if self._accumulation_steps:
      tf.cond(self._applies_now(), average, lambda: None)
    else:
      average()

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
      self._consume_accumulated_cycle()

    self._if_update_due(
        lambda: tf.logical_and(self.is_mask_update_iter(step), self._applies_now()),
        update_masks, lambda: self._inner_apply(replicas, grads, variables))

  _tested_step_offset = 0

  def _grow_score(self, index, step, gradient, mask):
    del index, step, mask
    return tf.abs(gradient)

  def _grown_slot_values(self, gradient, grown_values, shape):
    values = super()._grown_slot_values(gradient, grown_values, shape)
    if self.initial_acc_scale:
      accumulator = tf.cast(gradient, grown_values.dtype) * self.initial_acc_scale
      if not isinstance(self.inner_optimizer, tf1_momentum.TF1MomentumOptimizer):
        # Keras SGD: velocity = -learning_rate * accumulator.
        accumulator *= -tf.cast(self.inner_optimizer.learning_rate, accumulator.dtype)
      values[self._accumulator_slot_name(self.inner_optimizer)] = accumulator
    return values

  def get_config(self):
    config = super().get_config()
    config['initial_acc_scale'] = self.initial_acc_scale
    return config


class _OneShotDistributionOptimizer(SparseOptimizerBase):
  """Base of SNIP and DNW: masks follow a sparsity distribution, set by a score."""

  def __init__(self, optimizer, default_sparsity, mask_init_method,
               custom_sparsity_map=None, name=None, **kwargs):
    if default_sparsity is None:
      raise ValueError(f'{type(self).__name__} needs a default_sparsity in [0, 1).')
    super().__init__(optimizer, default_sparsity=default_sparsity,
                     mask_init_method=mask_init_method,
                     custom_sparsity_map=custom_sparsity_map, name=name, **kwargs)

  def _top_mask(self, index, score):
    """The mask of weight `index`: its best `score`s at its target count, in its
    structure."""
    rules = self._structures[index]
    return rules.select(score, rules.count)


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
    self.is_snipped = self.add_variable(
        shape=(), dtype='bool', initializer='zeros', name='is_snipped')

  def _initialize_masks(self):
    for mask in self._masks:
      mask.assign(tf.ones(mask.shape, mask.dtype))

  def _apply_step(self, replicas, grads, variables):
    def snip():
      # The original's score: the whole gradient, weight decay included.
      gradients = self._loss_gradients(replicas, grads, variables,
                                        without_regularization=False)
      for index, (gradient, kernel, mask) in enumerate(zip(
          gradients, self._kernels, self._masks)):
        kept = self._top_mask(index, tf.abs(gradient * tf.convert_to_tensor(kernel)))
        self._params[index].assign(
            tf.where(kept, kernel, tf.zeros_like(kernel)), tf.cast(kept, mask.dtype),
            self._reset_slots(index, tf.logical_not(kept)))
      self.is_snipped.assign(True)
      self._consume_accumulated_cycle()

    self._if_update_due(
        lambda: tf.logical_and(tf.logical_not(tf.convert_to_tensor(self.is_snipped)),
                               self._applies_now()),
        snip, lambda: self._inner_apply(replicas, grads, variables))

  def steps_without_update(self):
    if not self.built:
      return 0
    return math.inf if bool(self.is_snipped.numpy()) else 0


@keras.saving.register_keras_serializable(package='rigl')
class SparseDNWOptimizer(_OneShotDistributionOptimizer):
  """Discovering Neural Wirings: dense straight-through updates, top-|w| masks.

  The optimizer keeps each kernel's dense weights (`dense_kernels`); the model's kernel
  holds their top-|w| part. Every step applies the loss gradient with respect to the
  masked kernel to all the dense weights, then keeps the largest of them. As in the
  original, the regularizer's gradient does not reach them.
  """

  def __init__(self, optimizer, default_sparsity, mask_init_method,
               custom_sparsity_map=None, name='SparseDNWOptimizer', **kwargs):
    super().__init__(optimizer, default_sparsity, mask_init_method,
                     custom_sparsity_map, name=name, **kwargs)

  def _build_method_state(self):
    self.dense_kernels = [self.add_variable_from_reference(k, name='dense_kernel')
                          for k in self._kernels]
    with tf.init_scope():
      for dense, kernel in zip(self.dense_kernels, self._kernels):
        dense.assign(kernel)

  def _initialize_masks(self):
    self._update_masks()

  def _update_masks(self):
    changed = []
    for index, (dense, kernel, mask) in enumerate(zip(self.dense_kernels, self._kernels,
                                                      self._masks)):
      dense = tf.convert_to_tensor(dense)
      kept = self._top_mask(index, tf.abs(dense))
      changed.append(tf.reduce_sum(tf.cast(
          tf.logical_and(kept, tf.equal(tf.convert_to_tensor(mask), 0)), tf.float32)))
      mask.assign(tf.cast(kept, mask.dtype))
      kernel.assign(tf.where(kept, dense, tf.zeros_like(dense)))
    self.changed_connections.assign(tf.add_n(changed))

  def _apply_step(self, replicas, grads, variables):
    loss_grads = list(grads)
    for position, var in enumerate(variables):
      index = self._masked_index.get(id(var))
      if index is not None and grads[position] is not None:
        share = self._regularization_share(index, grads[position].dtype)
        if share is not None:
          loss_grads[position] = grads[position] - share
    for dense, kernel in zip(self.dense_kernels, self._kernels):
      kernel.assign(dense)
    self._inner_apply(replicas, loss_grads, variables, mask_gradients=False,
                      remask=False)
    for dense, kernel in zip(self.dense_kernels, self._kernels):
      dense.assign(kernel)
    self._update_masks()


@keras.saving.register_keras_serializable(package='rigl')
class GradualPruningOptimizer(SparseOptimizerBase):
  """Gradual magnitude pruning (Zhu & Gupta, 2017), the original's `prune` method.

  Sparsity follows s(t) = target + (initial - target) * (1 - p)^exponent with
  p = clip((t - sparsity_function_begin_step) / (sparsity_function_end_step -
  sparsity_function_begin_step), 0, 1). Every `frequency` steps in [begin_step,
  end_step] (after the weight update), each mask keeps the weights whose magnitude
  reaches the k-th largest, k = max(1, round(n * (1 - s_layer))), where the threshold is
  smoothed by `threshold_decay`. Pruned weights are zero (the original's only received
  weight decay, which takes them towards zero).

  Per-layer targets: a layer's sparsity is s(t) * s_layer / target_sparsity, where
  s_layer comes from the sparsity distribution (`mask_init_method`, `custom_sparsity_map`
  and `erk_power_scale` of `SparseOptimizerBase`; uniform by default, so every layer
  follows s(t)) and from `weight_sparsity_map`, the original's per-weight override.

  Under a `structure` other than 'unstructured', each pruning step keeps the k weights
  of largest magnitude that the structure allows (`rigl.structure`) instead of
  thresholding, so `threshold_decay` must be 0. Masks start at the densest the
  structure allows: dense, but for N:M the N largest of every M.

  Args:
    end_step: last pruning step; negative: prune forever, which needs
      `sparsity_function_end_step`.
    sparsity_function_begin_step, sparsity_function_end_step: where the schedule
      starts and reaches `target_sparsity`; default `begin_step` and `end_step`.
    weight_sparsity_map: `{weight key regex: sparsity}`; such a weight follows
      s(t) * sparsity / target_sparsity.
  """

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
    if kwargs.get('default_sparsity') is not None:
      raise ValueError('GradualPruningOptimizer starts dense and prunes to '
                       'target_sparsity; it takes no default_sparsity.')
    super().__init__(optimizer, name=name, **kwargs)
    if threshold_decay and self.structure != structures.UNSTRUCTURED:
      raise ValueError(
          f'threshold_decay={threshold_decay} smooths a magnitude threshold, which '
          f'structure={self.structure!r} does not prune by (it keeps the largest weights '
          'the structure allows); use threshold_decay=0.')
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
    self._final_sparsities = [self.target_sparsity] * len(self._keys)
    if self.target_sparsity:
      distribution = self.layer_sparsities(default_sparsity=self.target_sparsity)
      self._final_sparsities = [distribution[key] for key in self._keys]
    for pattern, sparsity in self.weight_sparsity_map.items():
      matched = [i for i, key in enumerate(self._keys) if re.fullmatch(pattern, key)]
      if not matched:
        raise ValueError(
            f'weight_sparsity_map key {pattern!r} matches no masked weight; masked '
            f'weights are {self._keys}.')
      for i in matched:
        self._final_sparsities[i] = sparsity
    self._sparsity_scales = [
        final / self.target_sparsity if self.target_sparsity else 1.0
        for final in self._final_sparsities]

  def _distribution_sparsities(self):
    return dict(zip(self._keys, self._final_sparsities))

  def _initialize_masks(self):
    # Masks start at the densest the structure allows, the largest weights: all of them,
    # but for N:M.
    if self.structure == structures.UNSTRUCTURED:
      return  # they are all ones
    for param, rules in zip(self._params, self._structures):
      kept = rules.select(tf.abs(param.dense_kernel()), int(np.prod(param.shape)))
      param.mask.assign(tf.cast(kept, param.mask.dtype))

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

  def _above_smoothed_threshold(self, kernel, keep, threshold):
    """Where |kernel| reaches the `keep`-th largest magnitude, smoothed over updates by
    `threshold_decay` (the variable `threshold` carries it)."""
    magnitudes = tf.reshape(tf.abs(kernel), [-1])
    new_threshold = tf.gather(tf.sort(magnitudes, direction='DESCENDING'), keep - 1)
    smoothed = ((1.0 - self.threshold_decay) * new_threshold +
                self.threshold_decay * tf.convert_to_tensor(threshold))
    threshold.assign(smoothed)
    return tf.abs(kernel) >= smoothed

  def _prune(self, step):
    sparsity = self.sparsity_at(step)
    changed = []
    for index, (kernel, mask, threshold, scale) in enumerate(zip(
        self._kernels, self._masks, self.thresholds, self._sparsity_scales)):
      kernel = tf.convert_to_tensor(kernel)
      # At least one weight stays, as contrib's k-th largest threshold keeps one.
      keep = tf.maximum(tf.cast(tf.round(
          int(np.prod(kernel.shape)) * (1.0 - sparsity * scale)), tf.int32), 1)
      if self.structure == structures.UNSTRUCTURED:
        kept = self._above_smoothed_threshold(kernel, keep, threshold)
      else:
        kept = self._structures[index].select(tf.abs(kernel), keep)
      old_mask = tf.convert_to_tensor(mask)
      new_mask = tf.cast(kept, mask.dtype)
      changed.append(tf.reduce_sum(tf.abs(new_mask - old_mask)))
      self._params[index].assign(tf.where(kept, kernel, tf.zeros_like(kernel)), new_mask,
                                 self._reset_slots(index, tf.logical_not(kept)))
    self.changed_connections.assign(tf.add_n(changed))
    self.last_mask_update_step.assign(tf.cast(step, tf.int64))

  def _apply_step(self, replicas, grads, variables):
    self._inner_apply(replicas, grads, variables)
    step = self._step()
    self._if_update_due(
        lambda: tf.logical_and(self.is_mask_update_iter(step), self._just_applied()),
        lambda: self._prune(step))

  def steps_without_update(self):
    if self._accumulation_steps:
      return 0
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
