"""Inference cost of one layer under the MicroNet Challenge counting rules.

The rules (NeurIPS 2019 MicroNet Challenge, as the RigL paper applied them):

- a layer is a dot product per output element: with `nnz` non-zero kernel weights applied at
  `P` output positions, it costs `nnz * P` multiplications and, since every output also gets
  a bias, `nnz * P` additions (`dot-product length - 1` per output plus one for the bias);
- every output goes through a ReLU, counted as one multiplication per output element;
- a parameter costs `param_bits`; a sparse kernel also stores a 1-bit mask entry for each
  of its weights, kept or not; and a bias of one parameter per output channel is always
  counted (a batch norm that follows folds into it).

Two conventions decide how the inputs to these rules are read off a Keras layer:

- `'rigl_2020'` reproduces the figures published with the paper (README tables and colabs):
  a kernel at sparsity `s` keeps `n * (1 - s)` weights (a real number); the output side is
  `ceil(input side / stride)`; a depthwise convolution is counted as an ordinary
  convolution from its channels to one output channel (in tf.keras of 2019
  DepthwiseConv2D subclassed Conv2D, so it took that branch); and the input side is the one
  the layer had in the reference Keras models of 2020. Those padded the first convolution
  and the strided depthwise convolutions with a ZeroPadding2D layer, and nothing else, so
  the first layer and depthwise layers are counted on their padded input (a strided first
  layer with padding='same' on its input plus the padding Keras adds), other convolutions on
  their input before any explicit padding. A padded input overcounts the output by a row
  and a column or more (MobileNet's `conv1`: 225 pixels in, 113 out instead of 112). The
  ERK budget of that era also rounded zero counts up (see `rigl.sparse_utils.get_stats`).
- `'exact'`: a kernel keeps `n - floor(n * s)` weights, the output positions are the layer's
  real output size, and a depthwise convolution has one output (and one bias) per channel.

`docs/flops.md` gives the size of the difference.
"""

import dataclasses
import math

import keras

CONVENTIONS = ('rigl_2020', 'exact')
CONV, DEPTHWISE, DENSE = 'conv', 'depthwise', 'dense'
COUNTABLE_LAYER_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                         keras.layers.Dense)


@dataclasses.dataclass(frozen=True)
class LayerCost:
  """Parameter bits, multiplications and additions of one layer for one example."""
  param_bits: float
  mults: float
  adds: float

  @property
  def flops(self):
    return self.mults + self.adds


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
  """What the counting rules need to know about a layer.

  `kernel_shape` is the shape the rules see: `(k, k, c_in, c_out)` for a convolution,
  `(k, k, channels, multiplier)` for a depthwise one and `(c_in, c_out)` for a dense layer.
  `output_positions` is the number of places the kernel is applied at (1 for a dense layer
  on a vector input).
  """
  kind: str
  kernel_shape: tuple
  output_positions: int

  @property
  def n_outputs_per_position(self):
    """Output channels: one per (channel, multiplier) pair for a depthwise kernel."""
    if self.kind == DEPTHWISE:
      return self.kernel_shape[-2] * self.kernel_shape[-1]
    return self.kernel_shape[-1]


def check_convention(convention):
  if convention not in CONVENTIONS:
    raise ValueError(
        f'Unknown counting convention {convention!r}; choose one of {CONVENTIONS}.')
  return convention


def n_nonzero_weights(n_weights, sparsity, convention):
  """Weights a kernel of `n_weights` keeps at `sparsity`."""
  if check_convention(convention) == 'rigl_2020':
    return n_weights * (1.0 - sparsity)
  return n_weights - math.floor(sparsity * n_weights)


def count_layer(geometry, sparsity, param_bits=32, convention='rigl_2020'):
  """`LayerCost` of a layer with the given geometry at `sparsity`."""
  n_weights = math.prod(geometry.kernel_shape)
  nnz = n_nonzero_weights(n_weights, sparsity, convention)
  n_outputs = geometry.n_outputs_per_position * geometry.output_positions
  weight_applications = nnz * geometry.output_positions
  mask_bits = n_weights if nnz < n_weights else 0
  bias_bits = geometry.n_outputs_per_position * param_bits
  return LayerCost(
      param_bits=nnz * param_bits + mask_bits + bias_bits,
      mults=weight_applications + n_outputs,  # the products, then one per ReLU
      adds=weight_applications)  # (dot length - 1) per output, then one per bias


def count_gru(input_size, units, kernel_sparsity, recurrent_sparsity, param_bits=32,
              convention='rigl_2020'):
  """`LayerCost` of one step of a GRU (Keras' `reset_after=True` form) for one example.

  Both kernels hold the three gates (update z, reset r, candidate h~), `3 * units`
  columns each. Counted with the rules above: every kept weight is one multiplication
  and one addition (its dot products, with the input and recurrent biases), and per
  unit the gates' arithmetic: 5 additions (z's and r's pre-activations, h~'s,
  `1 - z`, and `z h + (1 - z) h~`), 3 multiplications (`r * (U_h h + b)` and the two
  products of the mix) and the three activations (sigmoid, sigmoid, tanh) counted as
  one multiplication each, as the rules count a ReLU. Size: both kernels (with their
  1-bit masks when sparse) and both biases.
  """
  kernel = (input_size, 3 * units)
  recurrent = (units, 3 * units)
  nnz = [n_nonzero_weights(math.prod(shape), sparsity, convention)
         for shape, sparsity in ((kernel, kernel_sparsity), (recurrent, recurrent_sparsity))]
  mask_bits = sum(math.prod(shape) for shape, kept in zip((kernel, recurrent), nnz)
                  if kept < math.prod(shape))
  return LayerCost(
      param_bits=sum(nnz) * param_bits + mask_bits + 2 * 3 * units * param_bits,
      mults=sum(nnz) + 6 * units,
      adds=sum(nnz) + 5 * units)


def layer_kernel(layer):
  """The kernel variable of a Keras Conv2D, DepthwiseConv2D or Dense (masked or not)."""
  kernel = getattr(layer, 'kernel_variable', None)
  return kernel if kernel is not None else layer.kernel


def layer_kind(layer):
  """`DEPTHWISE`, `CONV` or `DENSE`; ValueError for a layer the rules cannot count."""
  # DepthwiseConv2D first: a subclass of it must not be taken for a plain convolution.
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    return DEPTHWISE
  if isinstance(layer, keras.layers.Conv2D):
    return CONV
  if isinstance(layer, keras.layers.Dense):
    return DENSE
  raise ValueError(
      f'Cannot count layer {getattr(layer, "name", layer)!r} of type '
      f'{type(layer).__name__}; countable layers are Keras Conv2D, DepthwiseConv2D and '
      'Dense (and rigl.layers masked versions of them).')


def _spatial_shape(layer, tensor_shape, what):
  spatial = (tuple(tensor_shape[2:4]) if layer.data_format == 'channels_first'
             else tuple(tensor_shape[1:3]))
  if len(tensor_shape) != 4 or None in spatial:
    raise ValueError(
        f'Layer {layer.name!r} has {what} shape {tensor_shape}; counting needs a known '
        'spatial size: build the model from a keras.Input with a fixed image size.')
  return spatial


def _connected_shape(layer, attribute):
  try:
    return tuple(getattr(layer, attribute).shape)
  except (AttributeError, ValueError) as error:
    raise ValueError(
        f'Layer {layer.name!r} is not connected to a single input; counting reads its '
        'input and output sizes, so pass layers of a functional or Sequential model '
        f'that was built on a keras.Input ({error}).') from error


def _implicit_padding(input_side, kernel_side, stride):
  """Pixels Keras adds for padding='same' along one side-length."""
  output_side = -(-input_side // stride)
  return max((output_side - 1) * stride + kernel_side - input_side, 0)


def layer_geometry(layer, convention='rigl_2020', is_first_layer=False,
                   kernel_shape=None):
  """`LayerGeometry` of a built, connected Keras layer under `convention`.

  `kernel_shape` overrides the layer's own (get_stats scales it by a width multiplier).
  """
  check_convention(convention)
  kind = layer_kind(layer)
  if kernel_shape is None:
    kernel_shape = tuple(int(d) for d in layer_kernel(layer).shape)
  if kind == DENSE:
    output_shape = _connected_shape(layer, 'output')
    # A dense layer on a sequence or an image applies its kernel at every position; the
    # MicroNet rules only knew vector inputs.
    positions = 1 if convention == 'rigl_2020' else math.prod(output_shape[1:-1])
    return LayerGeometry(kind, kernel_shape, int(positions))

  if convention == 'exact':
    height, width = _spatial_shape(layer, _connected_shape(layer, 'output'), 'output')
    return LayerGeometry(kind, kernel_shape, int(height * width))

  side = _spatial_shape(layer, _connected_shape(layer, 'input'), 'input')[0]
  stride = layer.strides[0]
  if is_first_layer and layer.padding == 'same' and stride > 1:
    side += _implicit_padding(side, layer.kernel_size[0], stride)
  elif kind == CONV and not is_first_layer:
    side = _spatial_shape(layer, _shape_before_zero_padding(layer.input), 'input')[0]
  output_side = -(-side // stride)
  if kind == DEPTHWISE:
    # Counted the 2019 way: a convolution from `channels` inputs to `multiplier` outputs.
    kind = CONV
  return LayerGeometry(kind, kernel_shape, output_side * output_side)


def _shape_before_zero_padding(tensor):
  """Shape of `tensor` before the ZeroPadding2D layers that produced it, if any."""
  while True:
    # Keras records the layer that produced a symbolic tensor only in this private field.
    history = getattr(tensor, '_keras_history', None)
    producer = history.operation if history is not None else None
    if not isinstance(producer, keras.layers.ZeroPadding2D):
      return tuple(tensor.shape)
    tensor = producer.input
