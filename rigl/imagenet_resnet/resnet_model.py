"""ResNet v1 for ImageNet as a Keras 3 functional model, with optional masked layers.

The architecture is the original's: the stride of a bottleneck block sits on its 3x3
convolution ("ResNet v1.5"), a strided convolution pads its input by a fixed amount that
depends only on the kernel size and then convolves without padding, and the last batch norm
of every block starts with gamma = 0. Layers carry the names of the original's TF1 variable
scopes without the `resnet_model/` prefix (`initial_conv`,
`bottleneck_2_block_group_projection_block_group1`, `batch_normalization_7`, ...; reference
§3.11), so that released checkpoints can be mapped onto the model by name.
"""

import keras

from rigl import layers as masked_layers

BATCH_NORM_DECAY = 0.9
BATCH_NORM_EPSILON = 1e-5
# depth -> (block type, blocks in each of the four groups)
MODEL_PARAMS = {
    18: ('residual', (2, 2, 2, 2)),
    34: ('residual', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
PRUNING_METHODS = ('baseline', 'threshold')


def check_pruning_method(pruning_method):
  """'baseline' builds plain layers; 'threshold' (the original's name) masked ones."""
  if pruning_method not in PRUNING_METHODS:
    raise ValueError(f'Unknown pruning_method {pruning_method!r}; choose one of '
                     f'{PRUNING_METHODS}.')


def l2_regularizer(weight_decay):
  """The original's `weight_decay * ||w||^2 / 2`, or None when there is no decay."""
  return keras.regularizers.L2(weight_decay / 2.) if weight_decay else None


class LayerFactory:
  """Creates the layers of one model: masked or plain, and batch norms named in order.

  The original's batch norms are unnamed TF1 layers, uniquified in creation order
  (`batch_normalization`, `batch_normalization_1`, ...); numbering them here keeps that
  order independent of Keras's global name counters.
  """

  def __init__(self, pruning_method, weight_decay):
    check_pruning_method(pruning_method)
    self.masked = pruning_method == 'threshold'
    self.weight_decay = weight_decay
    self._n_batch_norms = 0

  def batch_norm_relu(self, x, relu=True, init_zero=False):
    index = self._n_batch_norms
    self._n_batch_norms += 1
    x = keras.layers.BatchNormalization(
        momentum=BATCH_NORM_DECAY, epsilon=BATCH_NORM_EPSILON,
        gamma_initializer='zeros' if init_zero else 'ones',
        name='batch_normalization' + (f'_{index}' if index else ''))(x)
    return keras.layers.ReLU()(x) if relu else x

  def conv2d_fixed_padding(self, x, filters, kernel_size, strides, name, masked=True,
                           init_scale=1.0):
    """A bias-free convolution; strided ones pad (k - 1) around the input, then 'valid'."""
    if strides > 1 and kernel_size > 1:
      x = fixed_padding(x, kernel_size)
    conv_class = masked_layers.MaskedConv2D if self.masked and masked else keras.layers.Conv2D
    return conv_class(
        filters, kernel_size, strides=strides,
        padding='valid' if strides > 1 else 'same', use_bias=False,
        kernel_initializer=keras.initializers.VarianceScaling(
            scale=init_scale, mode='fan_in', distribution='truncated_normal'),
        kernel_regularizer=l2_regularizer(self.weight_decay), name=name)(x)

  def dense(self, x, units, name, kernel_initializer, masked=True):
    dense_class = masked_layers.MaskedDense if self.masked and masked else keras.layers.Dense
    return dense_class(
        units, kernel_initializer=kernel_initializer, bias_initializer='zeros',
        kernel_regularizer=l2_regularizer(self.weight_decay), name=name)(x)


def fixed_padding(x, kernel_size):
  """Pads (k - 1) // 2 pixels before and the rest after, whatever the input size."""
  total = kernel_size - 1
  before = total // 2
  return keras.layers.ZeroPadding2D(((before, total - before), (before, total - before)))(x)


def bottleneck_block(factory, x, filters, strides, use_projection, block_name):
  """1x1 (filters) -> 3x3 (filters, stride) -> 1x1 (4 filters), plus the shortcut."""
  shortcut = x
  if use_projection:
    shortcut = factory.conv2d_fixed_padding(
        x, 4 * filters, 1, strides, name='bottleneck_projection_' + block_name)
    shortcut = factory.batch_norm_relu(shortcut, relu=False)
  x = factory.conv2d_fixed_padding(x, filters, 1, 1, name='bottleneck_1_' + block_name)
  x = factory.batch_norm_relu(x)
  x = factory.conv2d_fixed_padding(x, filters, 3, strides,
                                   name='bottleneck_2_' + block_name)
  x = factory.batch_norm_relu(x)
  x = factory.conv2d_fixed_padding(x, 4 * filters, 1, 1, name='bottleneck_3_' + block_name)
  x = factory.batch_norm_relu(x, relu=False, init_zero=True)
  return keras.layers.ReLU()(keras.layers.Add()([x, shortcut]))


def residual_block(factory, x, filters, strides, use_projection, block_name):
  """3x3 (filters, stride) -> 3x3 (filters), plus the shortcut."""
  shortcut = x
  if use_projection:
    shortcut = factory.conv2d_fixed_padding(
        x, filters, 1, strides, name='residual_projection_' + block_name)
    shortcut = factory.batch_norm_relu(shortcut, relu=False)
  x = factory.conv2d_fixed_padding(x, filters, 3, strides, name='residual_1_' + block_name)
  x = factory.batch_norm_relu(x)
  x = factory.conv2d_fixed_padding(x, filters, 3, 1, name='residual_2_' + block_name)
  x = factory.batch_norm_relu(x, relu=False, init_zero=True)
  return keras.layers.ReLU()(keras.layers.Add()([x, shortcut]))


def resnet_v1_(resnet_depth, num_classes, pruning_method='baseline', width=1.,
               prune_first_layer=True, prune_last_layer=True, weight_decay=0.,
               input_shape=(224, 224, 3), name='resnet_model'):
  """ResNet v1 of `resnet_depth` (18, 34, 50, 101, 152 or 200) as a `keras.Model`.

  Args:
    resnet_depth: number of layers.
    num_classes: units of the final dense layer (logits, no softmax).
    pruning_method: 'baseline' (plain layers) or 'threshold' (masked layers).
    width: multiplier of every group's channel count (`int(64 * width)`, ...).
    prune_first_layer: with 'threshold', whether `initial_conv` is masked.
    prune_last_layer: with 'threshold', whether `final_dense` is masked.
    weight_decay: L2 scale; the loss gets `weight_decay * ||w||^2 / 2` per kernel.
    input_shape: shape of one channels-last image.
    name: name of the model.
  """
  if resnet_depth not in MODEL_PARAMS:
    raise ValueError(f'Unknown resnet_depth {resnet_depth!r}; choose one of '
                     f'{sorted(MODEL_PARAMS)}.')
  block_type, group_sizes = MODEL_PARAMS[resnet_depth]
  block_fn = bottleneck_block if block_type == 'bottleneck' else residual_block
  factory = LayerFactory(pruning_method, weight_decay)

  inputs = keras.Input(shape=input_shape)
  x = factory.conv2d_fixed_padding(inputs, int(64 * width), 7, 2, name='initial_conv',
                                   masked=prune_first_layer)
  x = factory.batch_norm_relu(x)
  x = keras.layers.MaxPooling2D(3, strides=2, padding='same', name='initial_max_pool')(x)
  for group, (n_blocks, base_filters, strides) in enumerate(
      zip(group_sizes, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
    group_name = f'block_group{group}'
    filters = int(base_filters * width)
    x = block_fn(factory, x, filters, strides, use_projection=True,
                 block_name='block_group_projection_' + group_name)
    for block in range(1, n_blocks):
      x = block_fn(factory, x, filters, 1, use_projection=False,
                   block_name=f'{group_name}_{block}_1')
  x = keras.layers.GlobalAveragePooling2D(name='final_avg_pool')(x)
  logits = factory.dense(x, num_classes, 'final_dense',
                         keras.initializers.RandomNormal(stddev=0.01),
                         masked=prune_last_layer)
  return keras.Model(inputs, logits, name=name)
