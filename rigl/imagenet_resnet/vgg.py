"""VGG-A, VGG-16 and VGG-19 for ImageNet as the original builds them (no batch norm).

Each group of 3x3 convolutions (He initialisation, no bias, ReLU) ends in a 2x2 max pool
(but the last); the fully connected layers fc6 and fc7 are left out as in the original,
and a global average pool feeds `fc8`, a 1x1 convolution giving the logits. Every
convolution is masked; `fc8` is masked with `prune_last_layer` (then without bias, as the
original's masked convolution) or else a plain convolution with bias and no weight decay.
Layer names are the last part of the original's scopes: `conv1_1` for
`vgg_16/conv1/conv1_1`, and `fc8`; the model is named after the variant (`vgg_16`).
"""

import keras

from rigl.imagenet_resnet import resnet_model

NETWORK_CFG = {
    'vgg_a': (1, 1, 2, 2, 2),
    'vgg_16': (2, 2, 3, 3, 3),
    'vgg_19': (2, 2, 4, 4, 4),
}
GROUP_FILTERS = (64, 128, 256, 512, 512)


def vgg(vgg_type, num_classes, pruning_method='baseline', init_method='baseline',
        width=1., prune_last_layer=True, data_format='channels_last', end_sparsity=0.,
        weight_decay=0., input_shape=(224, 224, 3), standardize_input=False):
  """The VGG variant `vgg_type` ('vgg_a', 'vgg_16' or 'vgg_19') as a `keras.Model`.

  Args:
    vgg_type: the variant, also the model's name.
    num_classes: output channels of `fc8` (logits).
    pruning_method: 'baseline' (plain layers) or 'threshold' (masked layers).
    init_method: 'baseline', 'sparse' or 'random_zeros' (see resnet_model).
    width: multiplier of every group's channel count.
    prune_last_layer: with 'threshold', whether `fc8` is masked.
    data_format: 'channels_last' or 'channels_first' (GPUs only).
    end_sparsity: the sparsity the 'sparse' and 'random_zeros' initializers assume.
    weight_decay: L2 scale of the convolutions: weight_decay * ||w||^2 / 2.
    input_shape: shape of one channels-last image.
    standardize_input: the input is a [0, 255] RGB image, standardised first.
  """
  if vgg_type not in NETWORK_CFG:
    raise ValueError(f'Unknown VGG variant {vgg_type!r}; choose one of '
                     f'{sorted(NETWORK_CFG)}.')
  factory = resnet_model.LayerFactory(pruning_method, weight_decay, init_method,
                                      end_sparsity, data_format)
  inputs, x = factory.inputs(input_shape, standardize_input)
  for group, (repeats, filters) in enumerate(zip(NETWORK_CFG[vgg_type], GROUP_FILTERS),
                                             start=1):
    for repeat in range(1, repeats + 1):
      x = factory.conv2d_fixed_padding(x, int(filters * width), 3, 1,
                                       name=f'conv{group}_{repeat}', init_scale=2.0)
      x = keras.layers.ReLU()(x)
    if group < len(GROUP_FILTERS):
      x = keras.layers.MaxPooling2D(2, data_format=data_format, name=f'pool{group}')(x)
  x = keras.layers.GlobalAveragePooling2D(data_format=data_format, keepdims=True,
                                         name='global_pool')(x)
  if prune_last_layer:
    x = factory.conv2d_fixed_padding(x, num_classes, 1, 1, name='fc8', init_scale=2.0)
  else:
    # contrib's layers.conv2d: Glorot-uniform weights, zero biases, no regulariser.
    x = factory.conv2d_fixed_padding(
        x, num_classes, 1, 1, name='fc8', masked=False, use_bias=True,
        kernel_initializer=keras.initializers.GlorotUniform(), weight_decay=0.)
  logits = keras.layers.Flatten(data_format=data_format, name='fc8_squeezed')(x)
  return keras.Model(inputs, logits, name=vgg_type)
