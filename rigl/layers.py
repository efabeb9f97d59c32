"""Masked Keras 3 layers: a non-trainable 0/1 `mask` beside each kernel.

The forward pass uses `kernel * mask`. The gradient that reaches the kernel is the dense
gradient with respect to the masked kernel (the product is straight-through for the
kernel), so the ordinary backward pass already gives RigL its grow score and DNW its
dense update. The sparse optimizers mask that gradient before the inner optimizer step.
"""

import keras
from keras.src.models import functional
import tensorflow as tf

# The attribute of a masked layer's kernel variable that holds its mask, so that an
# optimizer handed only trainable variables (as in `model.fit`) finds the mask of each
# kernel. An attribute, not a registry: the mask lives exactly as long as the kernel.
_MASK_ATTRIBUTE = '_rigl_mask'


@tf.custom_gradient
def _straight_through_product(kernel, mask):

  def grad(upstream):
    return upstream, None

  return kernel * mask, grad


def masked_weight(kernel, mask):
  """`kernel * mask` whose gradient with respect to `kernel` is the upstream gradient."""
  return _straight_through_product(tf.convert_to_tensor(kernel), tf.convert_to_tensor(mask))


def get_mask(variable):
  """The mask of a masked layer's kernel variable, or None for any other variable."""
  return getattr(variable, _MASK_ATTRIBUTE, None)


class MaskedLayerMixin:
  """Adds the `mask` weight once the wrapped layer has built its kernel."""

  def _add_mask(self):
    self.mask = self.add_weight(
        name='mask', shape=self.kernel_variable.shape, initializer='ones',
        trainable=False, dtype=self.variable_dtype)
    setattr(self.kernel_variable, _MASK_ATTRIBUTE, self.mask)

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

  def plain_equivalent(self):
    """`(Keras layer class, config, weights)` of this layer with the mask folded in."""
    plain_class = next(plain for plain, masked in _MASKED_CLASS_OF
                       if isinstance(self, masked))
    kernel = self.kernel_variable
    weights = [(w.numpy() * self.mask.numpy()) if w is kernel else w.numpy()
               for w in self.weights if w is not self.mask]
    return plain_class, self.get_config(), weights


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


def _is_graph_model(layer):
  return isinstance(layer, (keras.Sequential, functional.Functional))


def _maskable_layers(model):
  """The Dense/Conv2D/DepthwiseConv2D layers of `model` and of its nested graph models.

  Raises:
    ValueError: a layer that is not a Sequential or functional model holds maskable
      layers, which `keras.models.clone_model` cannot rebuild.
  """
  found = []
  for layer in model.layers:
    if _is_graph_model(layer):
      found.extend(_maskable_layers(layer))
    elif _masked_class(layer) is not None:
      found.append(layer)
    elif any(_masked_class(sub) is not None
             for sub in layer._flatten_layers(include_self=False)):  # pylint: disable=protected-access
      raise ValueError(
          f'Layer {layer.name!r} ({type(layer).__name__}) holds Dense/Conv layers but is '
          'neither a Sequential nor a functional model, so sparsify_model cannot rebuild '
          'it; build it from rigl.layers.MaskedDense, MaskedConv2D and '
          'MaskedDepthwiseConv2D directly.')
  return found


def sparsify_model(model, include=None, exclude=()):
  """A copy of a Sequential or functional Keras model with masked Dense/Conv layers.

  Layers of nested Sequential and functional models are converted too.

  Args:
    model: a built `keras.Sequential` or functional `keras.Model`.
    include: names of the layers to mask; None masks every Dense, Conv2D and
      DepthwiseConv2D layer.
    exclude: names of layers to leave dense (for example the first layer).

  Returns:
    A new model with the same weights, in which the chosen layers are masked layers with
    all-ones masks. Initialise the masks with `get_mask_init_fn` or let a sparse
    optimizer do it.

  Raises:
    ValueError: a name in `include`/`exclude` is not a maskable layer or names several
      (nested models may repeat a layer name), or a maskable layer sits in a layer that
      cannot be rebuilt (a subclassed model or layer).
  """
  if not _is_graph_model(model):
    raise ValueError(
        f'sparsify_model needs a Sequential or functional keras.Model, got '
        f'{type(model).__name__}; build subclassed models with rigl.layers.MaskedDense, '
        'MaskedConv2D and MaskedDepthwiseConv2D directly.')
  maskable = _maskable_layers(model)
  names = [l.name for l in maskable]
  named = set(names if include is None else include) | set(exclude)
  unknown = sorted(named - set(names))
  if unknown:
    raise ValueError(
        f'Layers {unknown} are not Dense, Conv2D or DepthwiseConv2D layers of this '
        f'model; maskable layers are {sorted(set(names))}.')
  ambiguous = sorted(n for n in named if names.count(n) > 1)
  if include is not None and ambiguous:
    raise ValueError(
        f'Layer names {ambiguous} name several layers of nested models; give the layers '
        'unique names to choose among them.')
  chosen = {id(l) for l in maskable
            if (include is None or l.name in include) and l.name not in exclude}

  def clone(layer):
    masked_class = _masked_class(layer)
    if masked_class is not None and id(layer) in chosen:
      return masked_class.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())

  new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
  old_layers = [l for l in model._flatten_layers(include_self=False) if l.weights]  # pylint: disable=protected-access
  new_layers = [l for l in new_model._flatten_layers(include_self=False) if l.weights]  # pylint: disable=protected-access
  for old_layer, new_layer in zip(old_layers, new_layers):
    if _is_graph_model(new_layer):
      continue  # Its layers are copied one by one.
    if isinstance(new_layer, MASKED_LAYERS) and not isinstance(old_layer, MASKED_LAYERS):
      for old_w, new_w in zip(old_layer.weights,
                              [w for w in new_layer.weights if w is not new_layer.mask]):
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
