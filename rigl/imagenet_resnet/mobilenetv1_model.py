"""MobileNet v1 for ImageNet as a Keras 3 functional model, with optional masked layers.

As in the original, only the 1x1 `contraction_1x1_<i>` convolutions and, with
`prune_last_layer`, `final_dense` are masked; `initial_conv` and the depthwise convolutions
stay dense. Layer names are the original's TF1 scopes without the `resnet_model/` prefix
(reference §3.11).
"""

import keras

from rigl.imagenet_resnet import resnet_model

# (filters, stride) of the 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def make_divisible(value, divisor=8, min_value=None):
  """Rounds a channel count to a multiple of `divisor`, never more than 10% down."""
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def depthwise_conv2d_fixed_padding(factory, x, stride, name):
  """An unmasked 3x3 depthwise convolution; strided ones pad 1 pixel around the input."""
  if stride > 1:
    x = factory.fixed_padding(x, 3)
  # The original's contrib separable_conv2d: glorot-uniform init and no weight decay.
  return keras.layers.DepthwiseConv2D(
      3, strides=stride, padding='valid' if stride > 1 else 'same', use_bias=False,
      depthwise_initializer='glorot_uniform', data_format=factory.data_format,
      name=name)(x)


def initial_conv(factory, x, filters):
  """The unmasked strided 3x3 stem convolution that both MobileNets start with.

  A plain `tf.layers.conv2d` in the original whatever the flags say, so its checkpoint
  variable is `initial_conv/kernel`.
  """
  return factory.conv2d_fixed_padding(x, filters, 3, 2, name='initial_conv', masked=False)


def classifier(factory, x, num_classes, prune_last_layer):
  """Global average pooling and `final_dense` (masked with `prune_last_layer`): logits."""
  x = factory.global_average_pool(x, 'final_avg_pool')
  return factory.dense(
      x, num_classes, 'final_dense',
      keras.initializers.VarianceScaling(mode='fan_in', distribution='truncated_normal'),
      masked=prune_last_layer)


def mobilenet_v1(num_classes, pruning_method='baseline', width=1., prune_last_layer=True,
                 weight_decay=0., input_shape=(224, 224, 3), name='resnet_model',
                 data_format='channels_last', standardize_input=False):
  """MobileNet v1 as a `keras.Model` returning logits.

  Args:
    num_classes: units of the final dense layer.
    pruning_method: 'baseline' (plain layers) or 'threshold' (masked 1x1 convolutions).
    width: channel multiplier, rounded by `make_divisible`.
    prune_last_layer: with 'threshold', whether `final_dense` is masked.
    weight_decay: L2 scale of the convolution and dense kernels (not the depthwise ones).
    input_shape: shape of one channels-last image.
    name: name of the model (the original reuses the ResNet's scope name).
    data_format: 'channels_last' or 'channels_first' (GPUs only).
    standardize_input: the input is a [0, 255] RGB image, standardised first.
  """
  factory = resnet_model.LayerFactory(pruning_method, weight_decay,
                                      data_format=data_format)
  inputs, x = factory.inputs(input_shape, standardize_input)
  x = factory.batch_norm_relu(initial_conv(factory, x, make_divisible(32 * width)))
  for block_id, (filters, stride) in enumerate(BLOCKS):
    x = depthwise_conv2d_fixed_padding(factory, x, stride, name=f'depthwise_nxn_{block_id}')
    x = factory.batch_norm_relu(x)
    out_filters = make_divisible(int(width * filters), divisor=1 if block_id == 0 else 8)
    x = factory.conv2d_fixed_padding(x, out_filters, 1, 1,
                                     name=f'contraction_1x1_{block_id}')
    x = factory.batch_norm_relu(x)
  return keras.Model(inputs, classifier(factory, x, num_classes, prune_last_layer),
                     name=name)
