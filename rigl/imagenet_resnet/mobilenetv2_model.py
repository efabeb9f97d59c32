"""MobileNet v2 for ImageNet as a Keras 3 functional model, with optional masked layers.

As in the original, the 1x1 convolutions (`expand_1x1_<i>`, `contraction_1x1_<i>`,
`final_1x1_conv`) and, with `prune_last_layer`, `final_dense` are masked; `initial_conv`
and the depthwise convolutions stay dense. No checkpoint of it was released.
"""

import keras

from rigl.imagenet_resnet import mobilenetv1_model
from rigl.imagenet_resnet import resnet_model

# (filters, stride) of the 17 inverted residual blocks.
BLOCKS = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1),
          (64, 1), (96, 1), (96, 1), (96, 1), (160, 2), (160, 1), (160, 1), (320, 1))


def mobilenet_v2(num_classes, pruning_method='baseline', width=1., prune_last_layer=True,
                 weight_decay=0., expansion_factor=6., input_shape=(224, 224, 3),
                 name='resnet_model', data_format='channels_last', standardize_input=False):
  """MobileNet v2 as a `keras.Model` returning logits.

  Args:
    num_classes: units of the final dense layer.
    pruning_method: 'baseline' (plain layers) or 'threshold' (masked 1x1 convolutions).
    width: channel multiplier, rounded by `make_divisible`.
    prune_last_layer: with 'threshold', whether `final_dense` is masked.
    weight_decay: L2 scale of the convolution and dense kernels (not the depthwise ones).
    expansion_factor: channels of a block's expansion relative to its input.
    input_shape: shape of one channels-last image.
    name: name of the model (the original reuses the ResNet's scope name).
    data_format: 'channels_last' or 'channels_first' (GPUs only).
    standardize_input: the input is a [0, 255] RGB image, standardised first.
  """
  factory = resnet_model.LayerFactory(pruning_method, weight_decay,
                                      data_format=data_format)
  make_divisible = mobilenetv1_model.make_divisible
  inputs, x = factory.inputs(input_shape, standardize_input)
  depth = make_divisible(32 * width)
  x = factory.batch_norm_relu(mobilenetv1_model.initial_conv(factory, x, depth))
  for block_id, (filters, stride) in enumerate(BLOCKS):
    block_input = x
    if block_id > 0:
      x = factory.conv2d_fixed_padding(x, int(expansion_factor * depth), 1, 1,
                                       name=f'expand_1x1_{block_id}')
      x = factory.batch_norm_relu(x)
    x = mobilenetv1_model.depthwise_conv2d_fixed_padding(
        factory, x, stride, name=f'depthwise_nxn_{block_id}')
    x = factory.batch_norm_relu(x)
    out_filters = make_divisible(int(width * filters), divisor=1 if block_id == 0 else 8)
    x = factory.conv2d_fixed_padding(x, out_filters, 1, 1,
                                     name=f'contraction_1x1_{block_id}')
    x = factory.batch_norm_relu(x, relu=False)
    if depth == out_filters and stride == 1:
      x = keras.layers.Add()([x, block_input])
    depth = out_filters
  x = factory.conv2d_fixed_padding(x, max(1280, make_divisible(1280 * width, 8)), 1, 1,
                                   name='final_1x1_conv')
  x = factory.batch_norm_relu(x)
  return keras.Model(
      inputs, mobilenetv1_model.classifier(factory, x, num_classes, prune_last_layer),
      name=name)
