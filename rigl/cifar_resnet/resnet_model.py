"""The original's CIFAR-10 WideResNet (Zagoruyko & Komodakis), pre-activation, maskable.

WRN-d-k: a 3x3 stem of 16 channels (`conv_1`), then three groups (`conv_2`, `conv_3`,
`conv_4`) of (d - 4) / 6 pre-activation blocks with 16k, 32k and 64k channels (the first
block of the last two groups strides by 2). A block is BN-ReLU, then 3x3 conv
(`conv_<g>_<n>_1`), BN-ReLU, dropout, 3x3 conv (`conv_<g>_<n>_2`), plus the shortcut:
the block's input, or a 1x1 'valid' convolution (`skip_conv_<g>`) of its activated input
when the channels change. Then BN-ReLU, an 8x8 average pool and the dense `logits`.

As the original: batch norm is non-fused with momentum 0.9 and epsilon 1e-5, kernels are
Glorot-uniform (TF1's default), the L2 regulariser (`l2 * ||w||^2 / 2`) is on every
kernel, the first layer is masked only with `prune_first_layer` and the last only with
`prune_last_layer`. Layer names are the original's TF1 scopes below `resnet_model/`.
"""

import keras

from rigl import layers as masked_layers

BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5
DROPOUT_RATE = 0.3
IMAGE_SIZE = 32


def wide_resnet(depth=22, width=2, num_classes=10, pruning_method='baseline',
                prune_first_layer=False, prune_last_layer=True, l2=5e-4,
                droprate=DROPOUT_RATE, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                name='resnet_model'):
  """WRN-`depth`-`width` as a `keras.Model` returning logits.

  Args:
    depth: 6n + 4 convolutional layers (n blocks per group).
    width: the channel multiplier k.
    num_classes: units of `logits`.
    pruning_method: 'baseline' (plain layers) or 'threshold' (masked layers).
    prune_first_layer: with 'threshold', whether `conv_1` is masked.
    prune_last_layer: with 'threshold', whether `logits` is masked.
    l2: the L2 scale of the kernels.
    droprate: dropout between a block's convolutions.
    input_shape: shape of one channels-last image.
    name: name of the model.

  Raises:
    ValueError: a depth that is not 6n + 4, or an unknown pruning method.
  """
  if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
    raise ValueError(f'A WideResNet has depth 6n + 4 (10, 16, 22, 28, ...), got {depth!r}.')
  if pruning_method not in ('baseline', 'threshold'):
    raise ValueError(f'Unknown pruning_method {pruning_method!r}; choose baseline or '
                     'threshold.')
  masked = pruning_method == 'threshold'
  regularizer = keras.regularizers.L2(l2 / 2.) if l2 else None
  norms = []

  def conv(x, filters, kernel_size, strides, layer_name, is_masked, padding='same'):
    conv_class = masked_layers.MaskedConv2D if is_masked else keras.layers.Conv2D
    return conv_class(filters, kernel_size, strides=strides, padding=padding,
                      use_bias=False, kernel_regularizer=regularizer, name=layer_name)(x)

  def bn_relu(x):
    # Unnamed TF1 layers, numbered in creation order.
    index = len(norms)
    norms.append(index)
    x = keras.layers.BatchNormalization(
        momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
        name='batch_normalization' + (f'_{index}' if index else ''))(x)
    return keras.layers.ReLU()(x)

  blocks = (depth - 4) // 6
  inputs = keras.Input(shape=input_shape)
  x = conv(inputs, 16, 3, 1, 'conv_1', masked and prune_first_layer)
  channels = 16
  for group, (filters, subsample) in enumerate(
      ((16 * width, False), (32 * width, True), (64 * width, True)), start=2):
    group_name = f'conv_{group}'
    for n in range(blocks):
      strides = 2 if subsample and n == 0 else 1
      skip = x
      x = bn_relu(x)
      if channels != filters:
        skip = conv(x, filters, 1, strides, f'skip_{group_name}', masked, padding='valid')
      x = conv(x, filters, 3, strides, f'{group_name}_{n}_1', masked)
      x = bn_relu(x)
      x = keras.layers.Dropout(droprate)(x)
      x = conv(x, filters, 3, 1, f'{group_name}_{n}_2', masked)
      x = keras.layers.Add()([x, skip])
      channels = filters
  x = bn_relu(x)
  x = keras.layers.AveragePooling2D(8, strides=1)(x)
  x = keras.layers.Flatten()(x)
  dense_class = (masked_layers.MaskedDense if masked and prune_last_layer
                 else keras.layers.Dense)
  logits = dense_class(num_classes, kernel_regularizer=regularizer, name='logits')(x)
  return keras.Model(inputs, logits, name=name)


def tf1_scope(model, layer):
  """The TF1 variable scope of `layer` in the original's checkpoints."""
  return f'{model.name}/{layer.name}'
