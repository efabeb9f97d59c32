"""Deploying a sparse model: masks folded into plain Keras layers, SavedModel, TFLite.

`strip_masks` turns a model with masked layers into a plain Keras 3 model whose kernels
are `kernel * mask` and that loads without this package; `save_saved_model` exports it
with a serving signature.
"""

import keras
import tensorflow as tf

from rigl import layers as masked_layers_lib


def _graph_model(model):
  from keras.src.models import functional  # pylint: disable=g-import-not-at-top
  return isinstance(model, (keras.Sequential, functional.Functional))


def strip_masks(model):
  """A plain Keras copy of `model`: masks folded into the kernels, no rigl layers.

  Masked layers become `Dense`/`Conv2D`/`DepthwiseConv2D` with `kernel * mask`; the
  other layers of this package become their plain Keras equivalents (e.g. the ImageNet
  models' batch norm and input standardisation). The copy computes the same function.

  Args:
    model: a built Sequential or functional Keras model with masked layers.

  Raises:
    ValueError: `model` has no masked layers, or is a subclassed model.
  """
  if not _graph_model(model):
    raise ValueError(f'strip_masks needs a Sequential or functional keras.Model, got '
                     f'{type(model).__name__}.')
  if not masked_layers_lib.masked_layers(model):
    raise ValueError(f'Model {model.name!r} has no masked layers (rigl.layers.MaskedDense, '
                     'MaskedConv2D, MaskedDepthwiseConv2D): there are no masks to fold.')

  def clone(layer):
    if hasattr(layer, 'plain_equivalent'):
      plain_class, config, _ = layer.plain_equivalent()
      return plain_class.from_config(config)
    return layer.__class__.from_config(layer.get_config())

  stripped = keras.models.clone_model(model, clone_function=clone, recursive=True)
  old_layers = model._flatten_layers(include_self=False)  # pylint: disable=protected-access
  new_layers = stripped._flatten_layers(include_self=False)  # pylint: disable=protected-access
  for old, new in zip(old_layers, new_layers):
    if _graph_model(old):
      continue  # Its layers are copied one by one.
    weights = (old.plain_equivalent()[2] if hasattr(old, 'plain_equivalent')
               else old.get_weights())
    if weights:
      new.set_weights(weights)
  return stripped


def save_saved_model(model, path):
  """Exports `model` with its masks folded as a SavedModel with a serving signature.

  The `serving_default` signature takes a float32 batch shaped like the model's input
  (for the ImageNet models `[None, 224, 224, 3]` images in [0, 255]) and returns
  `logits`, `probabilities` and `classes`.
  """
  stripped = strip_masks(model)
  spec = tf.TensorSpec([None, *stripped.input_shape[1:]], tf.float32, name='inputs')

  def serve(inputs):
    logits = tf.cast(stripped(inputs, training=False), tf.float32)
    return {'logits': logits, 'probabilities': tf.nn.softmax(logits),
            'classes': tf.argmax(logits, axis=-1)}

  archive = keras.export.ExportArchive()
  archive.track(stripped)
  archive.add_endpoint('serving_default', serve, input_signature=[spec])
  archive.write_out(path, verbose=False)
  return path
