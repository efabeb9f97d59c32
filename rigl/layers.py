"""The original's masked layers: Keras 3 layers that carry their kernel's mask.

`MaskedDense`, `MaskedConv2D` and `MaskedDepthwiseConv2D` are the Keras layers with one
more, non-trainable weight: `mask`, created with the kernel and registered as the
kernel's mask (`rigl.masking`). They compute exactly what their parent layers compute:
like every masked kernel, theirs is kept at zero where the mask is 0 by the sparse
optimizer (`rigl.sparse_optimizers`). They exist so that the paper's models carry
`<layer>/mask` weights, which the released TF1 checkpoints fill by name
(`rigl.tf1_checkpoints`); any other model is made sparse with `sparsify_model`.
"""

import keras

from rigl import masking

# The names users of the first versions imported from here.
get_mask = masking.get_mask
sparsify_model = masking.sparsify_model


class MaskedLayerMixin:
  """Adds the `mask` weight once the wrapped layer has built its kernel."""

  def _add_mask(self):
    self.mask = self.add_weight(
        name='mask', shape=self.kernel_variable.shape, initializer='ones',
        trainable=False, dtype=self.variable_dtype)
    kernel = self.kernel_variable
    view = masking.matrix_view(self, kernel)
    masking.mark(kernel, masking.KernelSpec(
        key=self.name, path=kernel.path, kind='kernel',
        shape=tuple(int(d) for d in kernel.shape), matrix=view,
        erk_shape=tuple(int(d) for d in kernel.shape)))
    masking.attach_mask(kernel, self.mask)

  # The generic Layer (de)serialisation saves every weight, the mask included; Dense's
  # own version writes only the kernel and bias.
  def save_own_variables(self, store):
    keras.layers.Layer.save_own_variables(self, store)

  def load_own_variables(self, store):
    keras.layers.Layer.load_own_variables(self, store)

  @property
  def kernel_variable(self):
    """The trainable kernel variable."""
    return self._kernel if isinstance(self, keras.layers.Dense) else self.kernel

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
  """`keras.layers.Dense` with a 0/1 `mask` of its kernel."""

  def build(self, input_shape):
    super().build(input_shape)
    self._add_mask()


@keras.saving.register_keras_serializable(package='rigl')
class MaskedConv2D(MaskedLayerMixin, keras.layers.Conv2D):
  """`keras.layers.Conv2D` with a 0/1 `mask` of its kernel."""

  def build(self, input_shape):
    super().build(input_shape)
    self._add_mask()


@keras.saving.register_keras_serializable(package='rigl')
class MaskedDepthwiseConv2D(MaskedLayerMixin, keras.layers.DepthwiseConv2D):
  """`keras.layers.DepthwiseConv2D` with a 0/1 `mask` of its depthwise kernel."""

  def build(self, input_shape):
    super().build(input_shape)
    self._add_mask()


MASKED_LAYERS = (MaskedDense, MaskedConv2D, MaskedDepthwiseConv2D)
# Order matters: a DepthwiseConv2D is checked before the Conv2D it may resemble.
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
  """`[(mask, kernel)]` of every masked weight of `model` (masked layers, and kernels
  whose sparse optimizer is built)."""
  unbuilt = [l.name for l in masked_layers(model) if not l.built]
  if unbuilt:
    raise ValueError(
        f'Layers {unbuilt} are not built yet; build the model (call it on data or give '
        'it an Input) before asking for its masks.')
  return [(mask, kernel) for kernel, mask in masking.masked_kernels(model)]


def get_masks(model):
  return [mask for mask, _ in get_mask_kernel_pairs(model)]
