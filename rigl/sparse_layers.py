"""Truly sparse execution of dense layers: only the active weights are stored and used.

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
"""

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
