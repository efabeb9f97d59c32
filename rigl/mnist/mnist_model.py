"""The original's MNIST network: fully connected 784-300-100-10 (`layer1`..`layer3`)."""

import keras

from rigl import layers as masked_layers_lib

LAYER_NAMES = ('layer1', 'layer2', 'layer3')
NUM_CLASSES = 10
NUM_PIXELS = 784


def build_model(masked=True, input_size=NUM_PIXELS, l2_scale=1e-4, unmasked=()):
  """FC input_size-300-100-10 with ReLU on `layer1` and `layer2`; `layer3` gives logits.

  Args:
    masked: build masked layers (every sparse method); False builds plain Dense layers.
    input_size: input features (fewer than 784 with the script's --input_mask_path).
    l2_scale: TF1's `l2_regularizer(scale)` on the kernels: scale * sum(w^2) / 2.
    unmasked: names of layers to keep plain even when `masked`.
  """
  # Keras' L2(l) is l * sum(w^2).
  regularizer = keras.regularizers.L2(l2_scale / 2) if l2_scale else None

  def dense(units, name, activation=None):
    cls = (masked_layers_lib.MaskedDense if masked and name not in unmasked
           else keras.layers.Dense)
    return cls(units, activation=activation, kernel_regularizer=regularizer, name=name)

  return keras.Sequential([
      keras.Input((input_size,)),
      dense(300, 'layer1', 'relu'),
      dense(100, 'layer2', 'relu'),
      dense(NUM_CLASSES, 'layer3'),
  ], name='mnist_fc')
