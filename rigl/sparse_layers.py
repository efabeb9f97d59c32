"""Truly sparse and condensed execution of dense layers: only the active weights are
stored and used.

`SparseDense` keeps a layer's `nnz` active weights as a trainable vector `values` and
their positions as `indices`; its forward pass, input gradient and weight gradient cost
in proportion to `nnz` where TensorFlow's kernels allow it, and an optimizer creates
slots for the active weights only:

- forward, `y = x W`: a CSR matrix of `W^T` (`SparseMatrixMatMul`, the fastest sparse
  kernel TensorFlow has on CPU: 2 ms against 11 ms dense for a 4096x4096 layer at 1%
  density and batch 128, measured on 2 cores);
- input gradient, `dx = dy W^T`: the same CSR matrix, transposed;
- weight gradient, `x^T dy` at the active positions: TensorFlow has no sampled
  dense-dense product, so it is either gathered row by row (`nnz * batch` work) or taken
  from the dense product (`n_in * n_out * batch` work in one BLAS call); measured, the
  gather wins only below about 1% density (`_GATHER_BELOW_DENSITY`), so each layer picks
  by its density.

RigL's grow step needs the dense gradient, but only on mask-update steps: the sparse
optimizer asks the layer for it (`request_dense_gradient`), and on those steps the layer
keeps the `nnz` largest-magnitude entries of `x^T dy`, so no dense-sized buffer is kept
between steps. That is all a RigL update can grow into: it keeps `n_keep` weights and
grows the best `nnz - n_keep` others, and however many of the `nnz` candidates are
kept, at least that many remain, ranked as in the dense gradient.

Layers convert to and from `rigl.layers.MaskedDense` (`to_sparse_execution`,
`to_masked_execution`): same function, same active set. Sparse execution needs the
default (single-device) strategy.

`CondensedDense` is SRigL's inference format for constant-fan-in layers, where every
output neuron that has inputs has the same number k of them: `values` and `indices` of
shape [k, neurons], computed as a gather, multiply and sum. `to_condensed` turns a
trained constant-fan-in model into one with condensed `Dense` and 1x1 `Conv2D` layers
and its ablated neurons (those with no inputs) removed, computing the same outputs.
"""

import collections
import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from rigl import layers as masked_layers
from rigl import masking
from rigl import selection
from tensorflow.python.ops.linalg.sparse import sparse_csr_matrix_ops  # pylint: disable=g-direct-tensorflow-import

# Below this density the gathered weight gradient beats the dense product (measured on
# 2 CPU cores, 4096x4096, batch 128: 12.6 ms against 11.6 ms at 1%, 23 against 13.5 at 2%).
_GATHER_BELOW_DENSITY = 0.009


@keras.saving.register_keras_serializable(package='rigl')
class SparseDense(keras.layers.Layer):
  """A dense layer that stores and computes with its active weights only.

  Args:
    units: output features.
    nnz: active weights (fixed for the layer's life; drop-and-grow keeps the count).
    activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
      bias_regularizer: as `keras.layers.Dense`; the kernel initializer draws a dense
      kernel once, of which the active entries are kept, and the regulariser acts on the
      active weights.
    seed: seed of the initial active positions (uniformly random).
  """

  def __init__(self, units, nnz, activation=None, use_bias=True,
               kernel_initializer='glorot_uniform', bias_initializer='zeros',
               kernel_regularizer=None, bias_regularizer=None, seed=0, **kwargs):
    super().__init__(**kwargs)
    self.units = int(units)
    self.nnz = int(nnz)
    self.activation = keras.activations.get(activation)
    self.use_bias = use_bias
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)
    self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = keras.regularizers.get(bias_regularizer)
    self.seed = seed
    self._when_dense_gradient_requested = lambda keep: None

  def build(self, input_shape):
    n_in = int(input_shape[-1])
    size = n_in * self.units
    if not 0 < self.nnz <= size:
      raise ValueError(f'SparseDense {self.name!r}: nnz must be in [1, {size}] for a '
                       f'{n_in}x{self.units} kernel, got {self.nnz}.')
    self.n_in = n_in
    positions = np.sort(np.random.RandomState(self.seed).choice(size, self.nnz,
                                                                replace=False))
    kernel = self.kernel_initializer((n_in, self.units))
    # Weights stay float32 in `call` under a mixed-precision policy (see there).
    self.values = self.add_weight(
        name='values', shape=(self.nnz,), regularizer=self.kernel_regularizer,
        autocast=False,
        initializer=keras.initializers.Constant(
            np.asarray(kernel).reshape(-1)[_kernel_order(positions, n_in, self.units)]))
    # Lets a sparse optimizer, handed only trainable variables, find the layer.
    self.values._rigl_sparse_layer = self  # pylint: disable=protected-access
    # Positions in W^T's row-major order (output j, input i: j * n_in + i), sorted, as
    # the CSR matrix of W^T wants them.
    self.indices = self.add_weight(
        name='indices', shape=(self.nnz,), dtype=_index_dtype(size), trainable=False,
        initializer=keras.initializers.Constant(positions))
    self.bias = (self.add_weight(name='bias', shape=(self.units,),
                                 initializer=self.bias_initializer,
                                 regularizer=self.bias_regularizer, autocast=False)
                 if self.use_bias else None)
    self._grow_candidates = _GrowCandidates(self.nnz, _index_dtype(size))
    self.gather_gradient = self.nnz / size < _GATHER_BELOW_DENSITY
    self.built = True

  @property
  def kernel_shape(self):
    return (self.n_in, self.units)

  @property
  def mask(self):
    """The active set as a read-only mask (what `MaskedDense.mask` would hold)."""
    return MaskView(self)

  @property
  def density(self):
    return self.nnz / (self.n_in * self.units)

  def request_dense_gradient(self, when):
    """Makes the backward pass keep the grow candidates when they are needed.

    Args:
      when: `when(keep)` calls `keep()` on the steps that need them (in a `tf.cond` of
        its choosing), while the backward pass is traced.
    """
    self._when_dense_gradient_requested = when

  def kernel_positions(self):
    """The active positions as flat indices of the [n_in, units] kernel (row-major)."""
    return _kernel_order_tensor(self.indices, self.n_in, self.units)

  def dense_kernel(self):
    """The kernel as a dense [n_in, units] tensor (zeros at inactive positions)."""
    return scatter_to_dense(self.kernel_positions(), self.values, self.kernel_shape)

  def dense_mask(self):
    """The 0/1 mask of the active positions, [n_in, units] float32."""
    return scatter_to_dense(self.kernel_positions(), tf.ones([self.nnz]), self.kernel_shape)

  def call(self, inputs):
    shape = tf.shape(inputs)
    # TensorFlow's CSR products take float32 only: under a mixed-precision policy the
    # layer computes in float32 and returns the policy's compute dtype.
    flat = tf.cast(tf.reshape(inputs, [-1, self.n_in]), self.values.dtype)
    outputs = self._matmul(flat, tf.convert_to_tensor(self.values))
    outputs = tf.reshape(outputs, tf.concat([shape[:-1], [self.units]], 0))
    if self.bias is not None:
      outputs = outputs + tf.convert_to_tensor(self.bias)
    if self.activation is not None:
      outputs = self.activation(outputs)
    return tf.cast(outputs, self.compute_dtype)

  def _matmul(self, x, values):
    indices = tf.convert_to_tensor(self.indices)
    layer = self

    @tf.custom_gradient
    def sparse_matmul(x, values):
      transposed = _csr_transposed_kernel(indices, values, layer.n_in, layer.units)
      outputs = sparse_csr_matrix_ops.sparse_matrix_mat_mul(
          transposed, x, transpose_b=True, transpose_output=True)

      def grad(upstream):
        dx = sparse_csr_matrix_ops.sparse_matrix_mat_mul(
            transposed, upstream, transpose_a=True, transpose_b=True,
            transpose_output=True)
        positions = _kernel_order_tensor(indices, layer.n_in, layer.units)
        if layer.gather_gradient:
          rows, cols = positions // layer.units, positions % layer.units
          dvalues = tf.reduce_sum(
              tf.gather(tf.transpose(x), rows) * tf.gather(tf.transpose(upstream), cols), 1)
          dense = lambda: tf.matmul(x, upstream, transpose_a=True)
        else:
          full = tf.matmul(x, upstream, transpose_a=True)
          dvalues = tf.gather(tf.reshape(full, [-1]), positions)
          dense = lambda: full
        layer._when_dense_gradient_requested(  # pylint: disable=protected-access
            lambda: layer._keep_grow_candidates(dense()))  # pylint: disable=protected-access
        return dx, dvalues

      return outputs, grad

    return sparse_matmul(x, values)

  def _keep_grow_candidates(self, dense_gradient):
    """Keeps the positions and values of the largest |gradient| entries (lowest index
    first among ties, as the masked RigL update ranks them)."""
    candidates = self._grow_candidates
    flat = tf.reshape(dense_gradient, [-1])
    chosen = selection.top_mask(tf.abs(flat), candidates.positions.shape[0])
    positions = tf.cast(tf.reshape(tf.where(chosen), [-1]), candidates.positions.dtype)
    candidates.positions.assign(positions)
    candidates.gradients.assign(tf.gather(flat, positions))

  def dense_gradient_from_candidates(self):
    """The dense gradient at the kept candidates, zero elsewhere; [n_in, units].

    The zeros never displace a candidate in RigL's grow ranking: the candidates are the
    first nnz positions by (|gradient| descending, index ascending), the order in which
    RigL grows.
    """
    candidates = self._grow_candidates
    return scatter_to_dense(candidates.positions, candidates.gradients, self.kernel_shape)

  def assign_active(self, new_mask, new_kernel):
    """Takes a dense [n_in, units] 0/1 mask with exactly nnz ones and the kernel values.

    Returns the flat kernel positions of the new active weights, in `values` order, so
    that per-weight state (optimizer slots) can be gathered from dense tensors to match.
    """
    transposed_mask = tf.reshape(tf.transpose(new_mask) > 0.5, [-1])
    new_indices = tf.cast(tf.reshape(tf.where(transposed_mask), [-1]), self.indices.dtype)
    positions = _kernel_order_tensor(new_indices, self.n_in, self.units)
    self.values.assign(tf.gather(tf.reshape(new_kernel, [-1]), positions))
    self.indices.assign(new_indices)
    return positions

  def plain_equivalent(self):
    """`(keras.layers.Dense, config, weights)`: this layer with a dense kernel."""
    config = {k: v for k, v in self.get_config().items() if k not in ('nnz', 'seed')}
    weights = [self.dense_kernel().numpy()] + ([self.bias.numpy()] if self.use_bias else [])
    return keras.layers.Dense, config, weights

  def get_config(self):
    config = super().get_config()
    config.update(
        units=self.units, nnz=self.nnz, activation=keras.activations.serialize(self.activation),
        use_bias=self.use_bias,
        kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        bias_initializer=keras.initializers.serialize(self.bias_initializer),
        kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        seed=self.seed)
    return config


class _GrowCandidates:
  """Where RigL may grow and the dense gradient there, kept on mask-update steps.

  Written by the backward pass and read by the optimizer within the same step, so a
  plain holder keeps them out of the layer's weights: checkpoints and saved models do
  not carry them.
  """

  def __init__(self, count, index_dtype):
    self.positions = tf.Variable(tf.zeros([count], index_dtype), trainable=False,
                                 name='grow_candidates')
    self.gradients = tf.Variable(tf.zeros([count]), trainable=False,
                                 name='grow_candidate_gradients')


def _index_dtype(size):
  return 'int32' if size < 2**31 else 'int64'


def _kernel_order(transposed_positions, n_in, units):
  """Transposed-layout positions (j * n_in + i) as kernel-layout ones (i * units + j)."""
  return (transposed_positions % n_in) * units + transposed_positions // n_in


def _kernel_order_tensor(transposed_positions, n_in, units):
  positions = tf.cast(transposed_positions, tf.int64)
  return (positions % n_in) * units + positions // n_in


def scatter_to_dense(positions, values, shape):
  """A dense tensor of `shape` holding `values` at the flat row-major `positions`."""
  size = int(np.prod(shape))
  dense = tf.scatter_nd(tf.cast(tf.reshape(positions, [-1, 1]), tf.int64), values, [size])
  return tf.reshape(dense, shape)


def _csr_transposed_kernel(indices, values, n_in, units):
  """The CSR matrix of W^T ([units, n_in]) from the sorted transposed positions."""
  indices = tf.cast(indices, tf.int64)
  coordinates = tf.stack([indices // n_in, indices % n_in], axis=1)
  return sparse_csr_matrix_ops.sparse_tensor_to_csr_sparse_matrix(
      coordinates, values, tf.constant([units, n_in], tf.int64))


# --- Converting models ------------------------------------------------------------------

def _graph_model(model):
  from keras.src.models import functional  # pylint: disable=g-import-not-at-top
  return isinstance(model, (keras.Sequential, functional.Functional))


def _convert(model, make, describe):
  if not _graph_model(model):
    raise ValueError(f'{describe} needs a Sequential or functional keras.Model, got '
                     f'{type(model).__name__}.')
  copies = []

  def clone(layer):
    replacement = make(layer)
    if replacement is None:
      copy, fill = layer.__class__.from_config(layer.get_config()), None
    else:
      copy, fill = replacement
    copies.append((layer, copy, fill))
    return copy

  new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
  for old, new, fill in copies:
    if fill is not None:
      fill(new)
    elif getattr(old, 'weights', None):
      new.set_weights(old.get_weights())
  return new_model


def to_sparse_execution(model):
  """A copy of `model` whose `MaskedDense` layers are `SparseDense` with the same
  active weights (the masks must already hold the sparsity to train at)."""

  def make(layer):
    if not isinstance(layer, masked_layers.MaskedDense):
      return None
    mask = layer.mask.numpy() > 0.5
    config = layer.get_config()
    config = {k: v for k, v in config.items() if k in (
        'name', 'units', 'activation', 'use_bias', 'kernel_initializer',
        'bias_initializer', 'kernel_regularizer', 'bias_regularizer', 'trainable', 'dtype')}
    sparse = SparseDense(nnz=int(mask.sum()), **config)
    kernel = layer.kernel_variable.numpy() * mask
    bias = layer.bias.numpy() if layer.use_bias else None

    def fill(new):
      new.assign_active(tf.constant(mask, tf.float32), tf.constant(kernel))
      if bias is not None:
        new.bias.assign(bias)

    return sparse, fill

  return _convert(model, make, 'to_sparse_execution')


def to_masked_execution(model):
  """A copy of `model` whose `SparseDense` layers are `MaskedDense` again."""

  def make(layer):
    if not isinstance(layer, SparseDense):
      return None
    config = layer.get_config()
    config.pop('nnz')
    config.pop('seed')
    masked = masked_layers.MaskedDense(**config)
    kernel, mask = layer.dense_kernel().numpy(), layer.dense_mask().numpy()
    bias = layer.bias.numpy() if layer.use_bias else None

    def fill(new):
      new.kernel_variable.assign(kernel)
      new.mask.assign(mask)
      if bias is not None:
        new.bias.assign(bias)

    return masked, fill

  return _convert(model, make, 'to_masked_execution')


def get_sparse_layer(variable):
  """The `SparseDense` whose `values` `variable` is, or None."""
  return getattr(variable, '_rigl_sparse_layer', None)


class MaskView:
  """A `SparseDense`'s active set seen as a mask: a name, a shape, a dense 0/1 tensor.

  What sparsity distributions and summaries read of a mask, for sparse layers.
  """

  def __init__(self, layer):
    self.layer = layer
    self.path = f'{layer.name}/mask'
    self.shape = layer.kernel_shape
    self.dtype = tf.float32

  def __tf_tensor__(self, dtype=None, name=None):
    del name
    mask = self.layer.dense_mask()
    return mask if dtype is None else tf.cast(mask, dtype)

  def numpy(self):
    return self.layer.dense_mask().numpy()

  def __array__(self, dtype=None, copy=None):
    del copy
    return self.numpy() if dtype is None else self.numpy().astype(dtype)


def sparse_layers(model):
  """The `SparseDense` layers of `model`, nested ones included."""
  return [l for l in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(l, SparseDense)]


def all_masks(model):
  """The masks of `model`, in the order Keras tracks its layers: those of its masked
  kernels (`rigl.masking`), `MaskView`s of its sparse layers."""
  masks = []
  for layer in model._flatten_layers(include_self=True):  # pylint: disable=protected-access
    if isinstance(layer, SparseDense):
      masks.append(layer.mask)
      continue
    own = list(layer._trainable_variables) + list(layer._non_trainable_variables)  # pylint: disable=protected-access
    masks.extend(masking.get_mask(v) for v in own if masking.get_mask(v) is not None)
  return masks


# --- Condensed layers ---------------------------------------------------------------------

# How a condensed layer computes its products: 'xla_loop', an XLA-compiled loop over the k
# input slots (the fastest in TensorFlow at every batch size measured,
# bench/results/structured.md), or 'gather', one gather, multiply and sum (what a TFLite
# file runs: LiteRT has these as builtins and no XLA).
CONDENSED_IMPLEMENTATIONS = ('xla_loop', 'gather')


def _input_index_dtype(n_in):
  # int16 positions read a quarter fewer bytes per weight than int32 (values are float32),
  # which the forward pass, bound by memory, repays (bench/results/structured.md).
  return 'int16' if n_in <= np.iinfo(np.int16).max + 1 else 'int32'


# Input slots per step of the loop: each step has a fixed cost and reads and writes the
# whole [neurons, batch] running sum, so its products are summed first. On 2 cores, 4 and
# 8 were equally fast at batch 1 and 16 slower (bench/results/structured.md,
# implementation table); at batch 256 that table, taken under a heavy shared load, has
# 4, 8 and 16 within its noise, and a quieter side-by-side run had 8 13-20% faster than
# 4 at 80% and 90% sparsity.
_SLOTS_PER_STEP = 8


def _condensed_loop(inputs, values, indices, slots_per_step=_SLOTS_PER_STEP):
  """`sum_j values[j, n] * inputs[:, indices[j, n]]` for every neuron n: [rows, units].

  A loop over the k slots j: each gathers, for every neuron, one row of the transposed
  inputs (all rows of the batch at once, contiguous), so nothing of size rows * k *
  units is ever built; compiled with XLA, a step's gathers, products and sums are one
  fused kernel.
  """
  fan_in, units = values.shape
  columns = tf.transpose(inputs)

  def product(j):
    return tf.gather(columns, indices[j]) * values[j][:, None]

  def step(s, total):
    first = s * slots_per_step
    return s + 1, total + tf.add_n([product(first + t) for t in range(slots_per_step)])

  steps = fan_in // slots_per_step
  _, total = tf.while_loop(
      lambda s, _: s < steps, step,
      (tf.constant(0), tf.zeros([units, tf.shape(inputs)[0]], inputs.dtype)),
      maximum_iterations=steps)
  for j in range(steps * slots_per_step, fan_in):
    total += product(j)
  return tf.transpose(total)


# Without Python control flow in it, autograph has nothing to convert.
_condensed_xla_loop = tf.function(_condensed_loop, jit_compile=True, autograph=False)


def _condensed_gather(inputs, values, indices):
  """The same sum as one gather ([rows, k, units], in the layout of the output: no
  transpose), multiply and sum."""
  return tf.reduce_sum(tf.gather(inputs, indices, axis=1) * values, axis=1)


@keras.saving.register_keras_serializable(package='rigl')
class CondensedDense(keras.layers.Layer):
  """A dense layer whose active output neurons each have the same k inputs, stored as
  those inputs only (SRigL's condensed layer).

  Active neuron n computes `activation(sum_j values[j, n] * x[..., indices[j, n]] +
  bias[n])`: `values` and `indices` are [k, active neurons] (input slot major, so that a
  slot's weights are contiguous for all neurons). Ablated neurons — output features that
  have no inputs — output `activation(bias)`, as the dense layer they come from did;
  `rigl.sparse_layers.to_condensed` removes them where the next layer can take their
  constant instead.

  Args:
    units: output features.
    fan_in: k, the inputs of each active neuron.
    active_units: the neurons that compute (default: all `units`); the others are ablated
      and `output_order` places the computed ones among them.
    activation, use_bias: as `keras.layers.Dense`.
    implementation: one of `CONDENSED_IMPLEMENTATIONS`.

  Weights: `values` [k, active_units] (float), `indices` [k, active_units] (int16 for
  up to 32768 input features, else int32), `bias` [units], and where neurons are
  ablated `output_order` [units] (int32: the column of the computed outputs each output
  feature takes, `active_units` for an ablated one). They are filled by `to_condensed`
  or from a saved file.
  """

  def __init__(self, units, fan_in, active_units=None, activation=None, use_bias=True,
               implementation='xla_loop', **kwargs):
    super().__init__(**kwargs)
    self.units = int(units)
    self.fan_in = int(fan_in)
    self.active_units = self.units if active_units is None else int(active_units)
    if self.units < 1 or self.fan_in < 1:
      raise ValueError(f'{type(self).__name__} {self.name!r}: units and fan_in must be '
                       f'at least 1, got units={units}, fan_in={fan_in}.')
    if not 1 <= self.active_units <= self.units:
      raise ValueError(f'{type(self).__name__} {self.name!r}: active_units must be in '
                       f'[1, units={self.units}], got {active_units}.')
    if implementation not in CONDENSED_IMPLEMENTATIONS:
      raise ValueError(f'{type(self).__name__} {self.name!r}: implementation must be one '
                       f'of {CONDENSED_IMPLEMENTATIONS}, got {implementation!r}.')
    self.activation = keras.activations.get(activation)
    self.use_bias = use_bias
    self.implementation = implementation

  def build(self, input_shape):
    n_in = int(input_shape[-1])
    if self.fan_in > n_in:
      raise ValueError(f'{type(self).__name__} {self.name!r}: fan_in={self.fan_in} is more '
                       f'than the {n_in} input features.')
    self.input_features = n_in
    slots = (self.fan_in, self.active_units)
    self.values = self.add_weight(name='values', shape=slots, initializer='zeros')
    self.indices = self.add_weight(name='indices', shape=slots, initializer='zeros',
                                   dtype=_input_index_dtype(n_in), trainable=False)
    self.bias = (self.add_weight(name='bias', shape=(self.units,), initializer='zeros')
                 if self.use_bias else None)
    self.output_order = (
        self.add_weight(name='output_order', shape=(self.units,), initializer='zeros',
                        dtype='int32', trainable=False)
        if self.active_units < self.units else None)
    self.built = True

  def call(self, inputs):
    # Rank-2 inputs go as they are: reshaping a batch of unknown size costs LiteRT a
    # shape computation per call.
    flat = (inputs if inputs.shape.rank == 2
            else tf.reshape(inputs, [-1, self.input_features]))
    values = tf.cast(self.values, flat.dtype)
    indices = tf.convert_to_tensor(self.indices)
    if self.implementation == 'xla_loop':
      outputs = _condensed_xla_loop(flat, values, indices)
    else:
      outputs = _condensed_gather(flat, values, indices)
    if self.output_order is not None:
      # Ablated features take the appended zero column (then the bias, as all do).
      outputs = tf.gather(tf.pad(outputs, [[0, 0], [0, 1]]), self.output_order, axis=1)
    if flat is not inputs:
      outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [self.units]], 0))
    if self.bias is not None:
      outputs = outputs + tf.cast(self.bias, outputs.dtype)
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.units,)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units, fan_in=self.fan_in, active_units=self.active_units,
                  activation=keras.activations.serialize(self.activation),
                  use_bias=self.use_bias, implementation=self.implementation)
    return config


@keras.saving.register_keras_serializable(package='rigl')
class CondensedPointwiseConv2D(CondensedDense):
  """A 1x1 `Conv2D` (channels last) as a condensed layer: `CondensedDense` on the
  channels of every pixel, after subsampling by `strides` (a 1x1 window needs no
  padding, 'same' or 'valid')."""

  def __init__(self, units, fan_in, strides=(1, 1), **kwargs):
    super().__init__(units, fan_in, **kwargs)
    self.strides = tuple(int(s) for s in (
        (strides, strides) if isinstance(strides, int) else strides))
    if len(self.strides) != 2 or min(self.strides) < 1:
      raise ValueError(f'CondensedPointwiseConv2D {self.name!r}: strides must be one or '
                       f'two positive integers, got {strides!r}.')

  def call(self, inputs):
    if self.strides != (1, 1):
      inputs = inputs[:, ::self.strides[0], ::self.strides[1], :]
    return super().call(inputs)

  def compute_output_shape(self, input_shape):
    spatial = [None if n is None else -(-n // s)
               for n, s in zip(input_shape[1:3], self.strides)]
    return (input_shape[0], *spatial, self.units)

  def get_config(self):
    return dict(super().get_config(), strides=list(self.strides))


def condensed_layers(model):
  """The condensed layers of `model`, nested ones included."""
  return [l for l in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(l, CondensedDense)]


@contextlib.contextmanager
def condensed_implementation(model, implementation):
  """Within the block, the condensed layers of `model` compute with `implementation`
  (one of `CONDENSED_IMPLEMENTATIONS`); what is traced inside it (an export, a new
  `tf.function`) keeps it."""
  if implementation not in CONDENSED_IMPLEMENTATIONS:
    raise ValueError(f'implementation must be one of {CONDENSED_IMPLEMENTATIONS}, got '
                     f'{implementation!r}.')
  previous = [(layer, layer.implementation) for layer in condensed_layers(model)]
  for layer, _ in previous:
    layer.implementation = implementation
  try:
    yield model
  finally:
    for layer, own in previous:
      layer.implementation = own


# --- Converting a constant-fan-in model --------------------------------------------------

# Layers that act on each feature alone at inference, or not at all: a constant feature
# stays a constant through them, so ablated neurons can be removed across them.
_FEATUREWISE_LAYERS = (keras.layers.Dropout, keras.layers.ReLU, keras.layers.LeakyReLU,
                       keras.layers.ELU, keras.layers.Activation)
_MIXING_ACTIVATIONS = (keras.activations.softmax, keras.activations.log_softmax)


def _is_featurewise(layer):
  if isinstance(layer, keras.layers.Activation):
    return layer.activation not in _MIXING_ACTIVATIONS
  return isinstance(layer, _FEATUREWISE_LAYERS)


def _is_pointwise_conv(layer):
  return (isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)
          and layer.groups == 1 and layer.data_format == 'channels_last')


def _linear_kernel(layer):
  """The kernel variable of a layer that `to_condensed` can condense or shrink (a `Dense`
  or a 1x1 `Conv2D`, masked or not), or None."""
  if isinstance(layer, keras.layers.Dense) and not getattr(layer, 'lora_enabled', False):
    return layer._kernel  # pylint: disable=protected-access
  if _is_pointwise_conv(layer):
    return layer.kernel
  return None


def _has_masked_kernel(layer):
  # Keras ops in a functional model (`h + a`) are operations without weights of their own.
  return any(masking.get_mask(v) is not None
             for v in getattr(layer, '_trainable_variables', ()))  # pylint: disable=protected-access


class _Graph:
  """The calls of one Sequential or functional model: who reads whose outputs."""

  def __init__(self, model):
    self.model = model
    functional = model._functional if isinstance(model, keras.Sequential) else model  # pylint: disable=protected-access
    if functional is None:
      raise ValueError(f'to_condensed needs a built model; {model.name!r} is not built '
                       '(give it a keras.Input or call it on data).')
    by_depth = functional._nodes_by_depth  # pylint: disable=protected-access
    nodes = [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]
    self.layers = list({id(n.operation): n.operation for n in nodes}.values())
    self._calls = collections.Counter(id(n.operation) for n in nodes)
    self._readers = collections.defaultdict(list)
    for node in nodes:
      for tensor in node.arguments.keras_tensors:
        self._readers[id(tensor._keras_history.operation)].append(node)  # pylint: disable=protected-access
    self._outputs = {id(t._keras_history.operation) for t in functional.outputs}  # pylint: disable=protected-access

  def removal_target(self, layer):
    """`(reader, between)`: the `Dense` or 1x1 `Conv2D` that alone reads the outputs of
    `layer` (called once), through the featurewise layers `between`; or None, where the
    outputs leave the model or reach anything else."""
    between, current = [], layer
    while self._calls[id(current)] == 1 and id(current) not in self._outputs:
      readers = self._readers[id(current)]
      if len(readers) != 1 or len(readers[0].arguments.keras_tensors) != 1:
        return None
      reader = readers[0].operation
      if self._calls[id(reader)] != 1:
        return None
      if not _is_featurewise(reader):
        return (reader, between) if _linear_kernel(reader) is not None else None
      between.append(reader)
      current = reader
    return None


def _graphs(model):
  """`_Graph`s of the model and of the Sequential and functional models inside it."""
  graph = _Graph(model)
  found = [graph]
  for layer in graph.layers:
    if _graph_model(layer):
      found.extend(_graphs(layer))
  return found


@dataclasses.dataclass
class _Replacement:
  """A layer of the converted model: its class, configuration and weight values (by the
  attribute that holds each variable)."""
  layer_class: type
  config: dict
  values: dict

  def make(self):
    def fill(new):
      for attribute, value in self.values.items():
        getattr(new, attribute).assign(value)
    return self.layer_class(**self.config), fill


@dataclasses.dataclass
class _DroppedInputs:
  """Input features of a layer that `to_condensed` removes, and the constants they held."""
  rows: np.ndarray  # bool, one per input feature
  constants: np.ndarray  # one per removed feature

  def fold(self, weights, bias):
    """The bias that takes the removed inputs' part of `weights @ inputs`."""
    return bias + self.constants @ weights[self.rows]


def _bias_values(layer, units):
  return (layer.bias.numpy().astype(np.float32) if layer.use_bias
          else np.zeros(units, np.float32))


def _common_config(layer, **extra):
  config = layer.get_config()
  kept = {k: config[k] for k in ('name', 'activation', 'trainable', 'dtype') if k in config}
  if _is_pointwise_conv(layer):
    kept['strides'] = list(layer.strides)
  return dict(kept, **extra)


_FAN_INS_SHOWN = 6


def _fan_in_error(layer, counts):
  fan_ins = collections.Counter(counts.tolist())
  # A layer trained without the structure has about as many fan-ins as neurons: name
  # the commonest few, not all.
  shown = sorted(fan_ins.most_common(_FAN_INS_SHOWN))
  listed = ', '.join(f'{n} neurons with {k}' for k, n in shown)
  if len(fan_ins) > len(shown):
    listed += f', and {len(fan_ins) - len(shown)} other fan-ins'
  return ValueError(
      f'to_condensed: layer {layer.name!r} is not constant fan-in: its active output '
      f'neurons have {min(fan_ins)} to {max(fan_ins)} inputs ({listed}). A condensed layer '
      'needs the same number of inputs for every neuron that has any (train with '
      "structure='constant_fan_in'), or pass min_sparsity above this layer's sparsity "
      'to keep it dense.')


def _condensed(layer, kernel, mask, dropped, target):
  """The `_Replacement` of a constant-fan-in layer, and the `_DroppedInputs` of the layer
  that reads it (`target`, from `_Graph.removal_target`) where its ablated neurons are
  removed."""
  weights = kernel * mask
  bias = _bias_values(layer, kernel.shape[1])
  if dropped is not None:
    bias = dropped.fold(weights, bias)
  counts = mask.sum(axis=0).astype(np.int64)
  active = counts > 0
  if not active.any():
    raise ValueError(f'to_condensed: layer {layer.name!r} has no active weight; its '
                     'output is a constant.')
  if len(set(counts[active].tolist())) != 1:
    raise _fan_in_error(layer, counts[active])
  fan_in, n_active = int(counts[active][0]), int(active.sum())
  # Each active neuron's input rows, ascending: the nonzeros of mask^T come neuron by
  # neuron.
  rows = np.nonzero(mask[:, active].T)[1].reshape(n_active, fan_in).T
  values = np.take_along_axis(weights[:, active], rows, axis=0)
  n_in = kernel.shape[0]
  if dropped is not None:
    # A removed input's part is in the bias now. Each neuron's remaining inputs move to
    # its first slots and the slots shrink to the most any neuron has left: with neuron
    # ablation upstream, k (the budget over this layer's active neurons) can exceed the
    # inputs that remain. Slots a neuron does not fill hold weight 0.
    renumbered = np.cumsum(~dropped.rows) - 1
    order = np.argsort(dropped.rows[rows], axis=0, kind='stable')
    rows = np.take_along_axis(rows, order, axis=0)
    values = np.take_along_axis(values, order, axis=0)
    removed = dropped.rows[rows]
    fan_in = max(int((~removed).sum(axis=0).max()), 1)
    values = np.where(removed, 0.0, values)[:fan_in]
    rows = np.where(removed, 0, renumbered[rows])[:fan_in]
    n_in -= int(dropped.rows.sum())
  ablated = ~active
  next_dropped = None
  config = _common_config(layer, fan_in=fan_in)
  assigned = {'values': values.astype(np.float32),
              'indices': rows.astype(_input_index_dtype(n_in))}
  if ablated.any() and target is not None:
    reader, between = target
    constants = layer.activation(tf.constant(bias[ablated][None]))
    for featurewise in between:
      constants = featurewise(constants, training=False)
    next_dropped = (reader, _DroppedInputs(ablated, constants.numpy()[0]))
    bias = bias[active]
    config['units'] = n_active
  else:
    config.update(units=int(kernel.shape[1]), active_units=n_active)
    if ablated.any():
      assigned['output_order'] = np.where(active, np.cumsum(active) - 1,
                                          n_active).astype(np.int32)
  config['use_bias'] = bool(layer.use_bias or np.any(bias != 0))
  if config['use_bias']:
    assigned['bias'] = bias
  layer_class = CondensedPointwiseConv2D if _is_pointwise_conv(layer) else CondensedDense
  return _Replacement(layer_class, config, assigned), next_dropped


def _without_inputs(layer, variable, kernel, mask, dropped):
  """The `_Replacement` of a layer that stays dense while its inputs `dropped.rows` are
  removed: those kernel rows go, their constant part goes into the bias."""
  weights = kernel if mask is None else kernel * mask
  bias = dropped.fold(weights, _bias_values(layer, kernel.shape[1]))
  kept = weights[~dropped.rows]
  shape = (*variable.shape[:-2], kept.shape[0], kept.shape[1])
  assigned = {'_kernel' if isinstance(layer, keras.layers.Dense) else 'kernel':
                  kept.reshape(shape)}
  config = layer.get_config()
  config['use_bias'] = bool(layer.use_bias or np.any(bias != 0))
  if config['use_bias']:
    assigned['bias'] = bias
  if isinstance(layer, masked_layers.MASKED_LAYERS):
    assigned['mask'] = mask[~dropped.rows].reshape(shape).astype(np.float32)
  return _Replacement(type(layer), config, assigned)


def _as_matrix(tensor):
  """A Dense or 1x1 Conv2D kernel (or its mask) as its (inputs, outputs) matrix."""
  array = tensor.numpy().astype(np.float32)
  return array.reshape(-1, array.shape[-1])


def to_condensed(model, min_sparsity=0.7, pointwise_convolutions=False, verbose=True):
  """A copy of a constant-fan-in model whose sparse `Dense` layers (and on request 1x1
  `Conv2D` layers) are condensed (`CondensedDense`, `CondensedPointwiseConv2D`),
  computing the same outputs.

  A layer is condensed when its kernel has a mask (`rigl.masking.get_mask`: a model
  sparsified with `sparsify_model` whose sparse optimizer is built, or `rigl.layers`'
  masked layers) and at least `min_sparsity` of it is inactive; every output neuron that
  has any active input must have the same number k of them. Neurons with none (ablated)
  are removed where a single `Dense` or 1x1 `Conv2D` reads the layer's outputs (directly
  or through featurewise layers: dropout, elementwise activations): their constant
  outputs, `activation(bias)`, go into that layer's bias and its rows for them are
  removed. Elsewhere (the model's outputs, outputs read by several layers or by others)
  the layer keeps its width and ablated neurons output their constant.

  Args:
    model: a built Sequential or functional model (nested ones are converted too).
    min_sparsity: denser layers stay as they are. Measured on a 4096x4096 layer
      (bench/results/structured.md), a condensed layer is slower than the dense one at
      50% sparsity and faster from about 70% at batch 1, from about 80% at batch 256.
    pointwise_convolutions: also condense 1x1 `Conv2D` layers. At ResNet-50's sizes and
      90% sparsity they were slower than the dense convolution at batch 1 (0.3-0.8x): a
      convolution's rows are its pixels, so even one image is a large batch.
    verbose: print one line saying what was condensed and what not, and why.

  Returns:
    The new model, not compiled (an inference copy). Its condensed layers compute with
    an XLA-compiled loop (`implementation='xla_loop'`); `rigl.export.to_tflite` writes
    them as LiteRT's gather, multiply and sum.

  Raises:
    ValueError: not a Sequential or functional model, a layer to condense that is not
      constant fan-in (naming its fan-ins) or has no active weight, or nothing to
      condense.
  """
  if not 0 <= min_sparsity < 1:
    raise ValueError(f'min_sparsity must be in [0, 1), got {min_sparsity}.')
  if not _graph_model(model):
    raise ValueError(f'to_condensed needs a Sequential or functional keras.Model, got '
                     f'{type(model).__name__}.')
  replacements, dropped_inputs, not_condensed, seen = {}, {}, [], set()
  condensed = removed = kept_constant = 0
  for graph in _graphs(model):
    for layer in graph.layers:
      if id(layer) in seen or _graph_model(layer):
        continue
      seen.add(id(layer))
      variable = _linear_kernel(layer)
      if variable is None:
        if _has_masked_kernel(layer):
          not_condensed.append((layer.name, 'not a Dense or 1x1 Conv2D'))
        continue
      mask_variable = masking.get_mask(variable)
      kernel = _as_matrix(variable)
      mask = None if mask_variable is None else _as_matrix(mask_variable) > 0.5
      dropped = dropped_inputs.get(id(layer))
      why_not = None
      if mask is not None and 1.0 - mask.mean() < min_sparsity:
        why_not = f'sparsity {1.0 - mask.mean():.2f} < min_sparsity'
      elif mask is not None and _is_pointwise_conv(layer) and not pointwise_convolutions:
        why_not = '1x1 Conv2D (pointwise_convolutions=False)'
      if mask is None or why_not:
        if why_not:
          not_condensed.append((layer.name, why_not))
        if dropped is not None:
          replacements[id(layer)] = _without_inputs(layer, variable, kernel, mask, dropped)
        continue
      ablated = int((mask.sum(axis=0) == 0).sum())
      target = graph.removal_target(layer) if ablated else None
      replacements[id(layer)], next_dropped = _condensed(layer, kernel, mask, dropped,
                                                          target)
      condensed += 1
      if next_dropped is not None:
        reader, dropped_by_reader = next_dropped
        dropped_inputs[id(reader)] = dropped_by_reader
        removed += ablated
      else:
        kept_constant += ablated
  if not condensed:
    raise ValueError(
        f'to_condensed found nothing to condense in {model.name!r}: it condenses Dense '
        'layers (and 1x1 Conv2D ones with pointwise_convolutions=True) whose kernel has a '
        'mask (rigl.layers\' masked layers, or sparsify_model with its sparse optimizer '
        f'built) at sparsity >= min_sparsity={min_sparsity}' + (f'; not condensed: {_reasons(not_condensed)}'
                             if not_condensed else '') + '.')
  with _uncompiled([graph.model for graph in _graphs(model)]):
    converted = _convert(model, lambda layer: (replacements[id(layer)].make()
                                               if id(layer) in replacements else None),
                         'to_condensed')
  if verbose:
    line = (f'to_condensed({model.name}): {condensed} condensed layers; {removed} ablated '
            f'neurons removed, {kept_constant} kept as constant outputs')
    print(line + (f'; not condensed: {_reasons(not_condensed)}.' if not_condensed
                  else '.'))
  return converted


@contextlib.contextmanager
def _uncompiled(models):
  """Within the block, `models` read as not compiled.

  Keras clones a compiled model compiled, rebuilding its optimizer for the copy's
  variables; a trained model's (sparse) optimizer refuses the condensed layers' other
  shapes, and an inference copy has no use for it.
  """
  compiled = [(m, m.compiled) for m in models]
  for m, _ in compiled:
    m.compiled = False
  try:
    yield
  finally:
    for m, was in compiled:
      m.compiled = was


def _reasons(named):
  """'reason: name, name; reason: name' of `[(name, reason)]`."""
  by_reason = collections.defaultdict(list)
  for name, reason in named:
    by_reason[reason].append(name)
  return '; '.join(f'{reason}: {", ".join(names)}' for reason, names in by_reason.items())
