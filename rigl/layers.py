"""Masked Keras 3 layers: a non-trainable 0/1 `mask` beside each kernel.

The forward pass uses `kernel * mask`. The gradient that reaches the kernel is the dense
gradient with respect to the masked kernel (the product is straight-through for the
kernel), so the ordinary backward pass already gives RigL its grow score and DNW its
dense update. The sparse optimizers mask that gradient before the inner optimizer step.
"""

import weakref

import keras
from keras.src.models import functional
import tensorflow as tf

# id(kernel variable) -> (weak reference to the kernel, mask). Lets an optimizer that is
# handed only trainable variables (as in `model.fit`) find the mask of each kernel.
_MASK_OF_KERNEL = {}


@tf.custom_gradient
def _straight_through_product(kernel, mask):

  def grad(upstream):
    return upstream, None

  return kernel * mask, grad


def masked_weight(kernel, mask):
  """`kernel * mask` whose gradient with respect to `kernel` is the upstream gradient."""
  return _straight_through_product(tf.convert_to_tensor(kernel), tf.convert_to_tensor(mask))


def _register(kernel, mask):
  for key in {id(kernel), id(getattr(kernel, 'value', kernel))}:
    _MASK_OF_KERNEL[key] = (weakref.ref(kernel), mask)


def get_mask(variable):
  """The mask of a masked layer's kernel variable, or None for any other variable."""
  candidates = [c for c in (variable, getattr(variable, 'value', None)) if c is not None]
  for candidate in candidates:
    entry = _MASK_OF_KERNEL.get(id(candidate))
    # Identity, not `in`: the id of a collected kernel can be reused by a new variable,
    # and `==` between Keras variables is elementwise (and fails against None).
    if entry is not None and any(entry[0]() is c for c in candidates):
      return entry[1]
  return None


class MaskedLayerMixin:
  """Adds the `mask` weight once the wrapped layer has built its kernel."""

  def _add_mask(self):
    self.mask = self.add_weight(
        name='mask', shape=self.kernel_variable.shape, initializer='ones',
        trainable=False, dtype=self.variable_dtype)
    _register(self.kernel_variable, self.mask)

  # The generic Layer (de)serialisation saves every weight, the mask included; Dense's
  # own version writes only the kernel and bias.
  def save_own_variables(self, store):
    keras.layers.Layer.save_own_variables(self, store)

  def load_own_variables(self, store):
    keras.layers.Layer.load_own_variables(self, store)

  @property
  def kernel_variable(self):
    """The trainable kernel variable (not the masked tensor)."""
    return self._kernel if isinstance(self, keras.layers.Dense) else self.kernel

  @property
  def masked_kernel(self):
    return masked_weight(self.kernel_variable, self.mask)


@keras.saving.register_keras_serializable(package='rigl')
class MaskedDense(MaskedLayerMixin, keras.layers.Dense):
  """`keras.layers.Dense` whose kernel is multiplied by a 0/1 mask."""

  def build(self, input_shape):
    super().build(input_shape)
    self._add_mask()

  def call(self, inputs, training=None):
    outputs = keras.ops.matmul(inputs, self.masked_kernel)
    if self.bias is not None:
      outputs = keras.ops.add(outputs, self.bias)
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs


@keras.saving.register_keras_serializable(package='rigl')
class MaskedConv2D(MaskedLayerMixin, keras.layers.Conv2D):
  """`keras.layers.Conv2D` whose kernel is multiplied by a 0/1 mask."""

  def build(self, input_shape):
    super().build(input_shape)
    self._add_mask()

  def convolution_op(self, inputs, kernel):
    return super().convolution_op(inputs, masked_weight(kernel, self.mask))


@keras.saving.register_keras_serializable(package='rigl')
class MaskedDepthwiseConv2D(MaskedLayerMixin, keras.layers.DepthwiseConv2D):
  """`keras.layers.DepthwiseConv2D` whose depthwise kernel is multiplied by a 0/1 mask."""

  def build(self, input_shape):
    super().build(input_shape)
    self._add_mask()

  def call(self, inputs):
    outputs = keras.ops.depthwise_conv(
        inputs, self.masked_kernel, strides=self.strides, padding=self.padding,
        dilation_rate=self.dilation_rate, data_format=self.data_format)
    if self.use_bias:
      channel_axis = -1 if self.data_format == 'channels_last' else 1
      bias_shape = [1] * len(outputs.shape)
      bias_shape[channel_axis] = -1
      outputs = keras.ops.add(outputs, keras.ops.reshape(self.bias, bias_shape))
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs


MASKED_LAYERS = (MaskedDense, MaskedConv2D, MaskedDepthwiseConv2D)
# Order matters: DepthwiseConv2D is checked before the Conv2D it may resemble.
_MASKED_CLASS_OF = (
    (keras.layers.DepthwiseConv2D, MaskedDepthwiseConv2D),
    (keras.layers.Dense, MaskedDense),
    (keras.layers.Conv2D, MaskedConv2D),
)


def masked_layers(model):
  """Every masked layer of a model (or layer), in the order Keras tracks them."""
  if isinstance(model, MASKED_LAYERS):
    return [model]
  return [l for l in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
          if isinstance(l, MASKED_LAYERS)]


def get_mask_kernel_pairs(model):
  """`[(mask, kernel)]` for every masked layer of `model`; both must be built."""
  pairs = []
  for layer in masked_layers(model):
    if not layer.built:
      raise ValueError(
          f'Layer {layer.name!r} is not built yet; build the model (call it on data '
          'or give it an Input) before asking for its masks.')
    pairs.append((layer.mask, layer.kernel_variable))
  return pairs


def get_masks(model):
  return [mask for mask, _ in get_mask_kernel_pairs(model)]


def sparsify_model(model, include=None, exclude=()):
  """A copy of a Sequential or functional Keras model with masked Dense/Conv layers.

  Args:
    model: a built `keras.Sequential` or functional `keras.Model`.
    include: names of the layers to mask; None masks every Dense, Conv2D and
      DepthwiseConv2D layer.
    exclude: names of layers to leave dense (for example the first layer).

  Returns:
    A new model with the same weights, in which the chosen layers are masked layers with
    all-ones masks. Initialise the masks with `get_mask_init_fn` or let a sparse
    optimizer do it.
  """
  if not isinstance(model, (keras.Sequential, functional.Functional)):
    raise ValueError(
        f'sparsify_model needs a Sequential or functional keras.Model, got '
        f'{type(model).__name__}; build subclassed models with rigl.layers.MaskedDense, '
        'MaskedConv2D and MaskedDepthwiseConv2D directly.')
  maskable = {l.name for l in model._flatten_layers(include_self=False)  # pylint: disable=protected-access
              if _masked_class(l) is not None}
  chosen = set(maskable if include is None else include)
  unknown = sorted((chosen | set(exclude)) - maskable)
  if unknown:
    raise ValueError(
        f'Layers {unknown} are not Dense, Conv2D or DepthwiseConv2D layers of this '
        f'model; maskable layers are {sorted(maskable)}.')
  chosen -= set(exclude)

  def clone(layer):
    masked_class = _masked_class(layer)
    if masked_class is not None and layer.name in chosen:
      return masked_class.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())

  new_model = keras.models.clone_model(model, clone_function=clone)
  old_layers = {l.name: l for l in model._flatten_layers(include_self=False)}  # pylint: disable=protected-access
  for new_layer in new_model._flatten_layers(include_self=False):  # pylint: disable=protected-access
    old_layer = old_layers.get(new_layer.name)
    if old_layer is None or not old_layer.weights:
      continue
    if isinstance(new_layer, MASKED_LAYERS):
      for old_w, new_w in zip(old_layer.weights, [w for w in new_layer.weights
                                                  if w is not new_layer.mask]):
        new_w.assign(old_w)
    else:
      new_layer.set_weights(old_layer.get_weights())
  return new_model


def _masked_class(layer):
  if isinstance(layer, MASKED_LAYERS):
    return None
  for plain, masked in _MASKED_CLASS_OF:
    if type(layer) is plain:  # pylint: disable=unidiomatic-typecheck
      return masked
  return None
