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
import tensorflow as tf

from rigl import layers as masked_layers

BATCH_NORM_DECAY = 0.9
# The original asks for 1e-5, but TF1's fused batch norm raises any epsilon below cuDNN's
# minimum, 1.001e-5, to it; that is what the released checkpoints were trained and
# evaluated with.
BATCH_NORM_EPSILON = 1.001e-5
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
# The input pipeline gives RGB images in [0, 255]; the original's model_fn standardised
# them with these.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
INIT_METHODS = ('baseline', 'sparse', 'random_zeros')
DATA_FORMATS = ('channels_last', 'channels_first')


def check_pruning_method(pruning_method):
  """'baseline' builds plain layers; 'threshold' (the original's name) masked ones."""
  if pruning_method not in PRUNING_METHODS:
    raise ValueError(f'Unknown pruning_method {pruning_method!r}; choose one of '
                     f'{PRUNING_METHODS}.')


def l2_regularizer(weight_decay):
  """The original's `weight_decay * ||w||^2 / 2`, or None when there is no decay."""
  return keras.regularizers.L2(weight_decay / 2.) if weight_decay else None


@keras.saving.register_keras_serializable(package='rigl')
class ImageStandardization(keras.layers.Layer):
  """`(image - MEAN_RGB) / STDDEV_RGB` of channels-last [0, 255] images, no weights."""

  def call(self, images):
    images = keras.ops.subtract(images, keras.ops.convert_to_tensor(MEAN_RGB, images.dtype))
    return keras.ops.divide(images, keras.ops.convert_to_tensor(STDDEV_RGB, images.dtype))

  def plain_equivalent(self):
    """The same standardisation as a plain Keras `Normalization` layer."""
    return keras.layers.Normalization, {
        'name': self.name, 'mean': list(MEAN_RGB),
        'variance': [s * s for s in STDDEV_RGB]}, []


@keras.saving.register_keras_serializable(package='rigl')
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """Batch norm whose inference runs TF1's fused kernel, as the original's graph did.

  Training uses Keras' batch norm; evaluation uses `fused_batch_norm` with the moving
  statistics, so that a released checkpoint gives the original's logits to the last bit
  that the kernels allow.
  """

  def call(self, inputs, training=None, mask=None):
    if training or not self.center or not self.scale or len(inputs.shape) != 4:
      return super().call(inputs, training=training, mask=mask)
    channels_first = self.axis in (1, -3)
    outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
        inputs, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
        mean=tf.cast(self.moving_mean, tf.float32),
        variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
        data_format='NCHW' if channels_first else 'NHWC', is_training=False)
    return outputs

  def plain_equivalent(self):
    """A plain Keras `BatchNormalization` with these weights."""
    return (keras.layers.BatchNormalization, self.get_config(),
            [w.numpy() for w in self.weights])


@keras.saving.register_keras_serializable(package='rigl')
class SparseVarianceScaling(keras.initializers.Initializer):
  """Glorot-uniform scaled up for a layer that keeps a fraction 1 - sparsity of weights.

  The original's `SparseFCVarianceScalingInitializer`: U(-l, l) with
  l = sqrt(6 / (nnz / fan_out + nnz / fan_in)), nnz = (1 - sparsity) * size, i.e.
  l = sqrt(6 / ((1 - sparsity) * (fan_in + fan_out))). The original accepted only 2-D
  kernels; here the fans of a convolution include its receptive field, as Keras' own
  Glorot initialiser counts them.
  """

  def __init__(self, sparsity, seed=None):
    if not 0 <= sparsity < 1:
      raise ValueError(f'sparsity must be in [0, 1), got {sparsity!r}.')
    self.sparsity, self.seed = float(sparsity), seed
    self._glorot = keras.initializers.VarianceScaling(
        scale=1.0 / (1.0 - self.sparsity), mode='fan_avg', distribution='uniform',
        seed=seed)

  def __call__(self, shape, dtype=None):
    return self._glorot(shape, dtype)

  def get_config(self):
    return {'sparsity': self.sparsity, 'seed': self.seed}


@keras.saving.register_keras_serializable(package='rigl')
class RandomSparse(keras.initializers.Initializer):
  """The original's `RandomSparseInitializer`: variance scaling with entries set to
  zero where U[0, 1) < sparsity."""

  def __init__(self, sparsity, seed=None):
    if not 0 <= sparsity <= 1:
      raise ValueError(f'sparsity must be in [0, 1], got {sparsity!r}.')
    self.sparsity, self.seed = float(sparsity), seed
    self._scaling = keras.initializers.VarianceScaling(
        mode='fan_in', distribution='truncated_normal', seed=seed)
    self._uniform = keras.initializers.RandomUniform(0.0, 1.0, seed=seed)

  def __call__(self, shape, dtype=None):
    values = self._scaling(shape, dtype)
    return keras.ops.where(self._uniform(shape, dtype) < self.sparsity,
                           keras.ops.zeros_like(values), values)

  def get_config(self):
    return {'sparsity': self.sparsity, 'seed': self.seed}


def pick_initializer(kernel_initializer, init_method, pruning_method, end_sparsity):
  """The original's `_pick_initializer`: the initializer an `init_method` asks for."""
  if init_method not in INIT_METHODS:
    raise ValueError(f'Unknown init_method {init_method!r}; choose one of {INIT_METHODS}.')
  if init_method == 'sparse':
    if pruning_method != 'threshold':
      raise ValueError("init_method='sparse' initialises masked layers, so it needs "
                       f"pruning_method='threshold', got {pruning_method!r}.")
    return SparseVarianceScaling(end_sparsity)
  if init_method == 'random_zeros':
    if pruning_method != 'baseline':
      raise ValueError("init_method='random_zeros' zeroes weights of plain layers, so it "
                       f"needs pruning_method='baseline', got {pruning_method!r}.")
    return RandomSparse(end_sparsity)
  return kernel_initializer


class LayerFactory:
  """Creates the layers of one model: masked or plain, and batch norms named in order.

  The original's batch norms are unnamed TF1 layers, uniquified in creation order
  (`batch_normalization`, `batch_normalization_1`, ...); numbering them here keeps that
  order independent of Keras's global name counters.

  Args:
    pruning_method: 'baseline' (plain layers) or 'threshold' (masked layers).
    weight_decay: L2 scale of the kernels.
    init_method: 'baseline', 'sparse' or 'random_zeros' (see `pick_initializer`).
    end_sparsity: the sparsity the 'sparse' and 'random_zeros' initializers assume.
    data_format: 'channels_last' or 'channels_first' (GPUs only: TensorFlow's CPU
      convolutions need channels_last).
  """

  def __init__(self, pruning_method, weight_decay, init_method='baseline',
               end_sparsity=0., data_format='channels_last'):
    check_pruning_method(pruning_method)
    if data_format not in DATA_FORMATS:
      raise ValueError(f'Unknown data_format {data_format!r}; choose one of '
                       f'{DATA_FORMATS}.')
    pick_initializer(None, init_method, pruning_method, end_sparsity)  # Validates.
    self.masked = pruning_method == 'threshold'
    self.pruning_method = pruning_method
    self.weight_decay = weight_decay
    self.init_method = init_method
    self.end_sparsity = end_sparsity
    self.data_format = data_format
    self._n_batch_norms = 0

  def inputs(self, input_shape, standardize=False):
    """The model's channels-last input and the tensor the first layer takes.

    Args:
      input_shape: shape of one channels-last image.
      standardize: the input is a [0, 255] image, standardised first (the original's
        model_fn did that before the network).
    """
    inputs = keras.Input(shape=input_shape)
    x = ImageStandardization(name='standardize')(inputs) if standardize else inputs
    if self.data_format == 'channels_first':
      x = keras.layers.Permute((3, 1, 2), name='to_channels_first')(x)
    return inputs, x

  def batch_norm_relu(self, x, relu=True, init_zero=False):
    index = self._n_batch_norms
    self._n_batch_norms += 1
    x = FusedBatchNormalization(
        axis=1 if self.data_format == 'channels_first' else -1,
        momentum=BATCH_NORM_DECAY, epsilon=BATCH_NORM_EPSILON,
        gamma_initializer='zeros' if init_zero else 'ones',
        name='batch_normalization' + (f'_{index}' if index else ''))(x)
    return keras.layers.ReLU()(x) if relu else x

  def fixed_padding(self, x, kernel_size):
    """Pads (k - 1) // 2 pixels before and the rest after, whatever the input size."""
    total = kernel_size - 1
    before = total // 2
    return keras.layers.ZeroPadding2D(
        ((before, total - before), (before, total - before)),
        data_format=self.data_format)(x)

  def conv2d_fixed_padding(self, x, filters, kernel_size, strides, name, masked=True,
                           init_scale=1.0, use_bias=False, kernel_initializer=None,
                           weight_decay=None):
    """A convolution; strided ones pad (k - 1) around the input, then 'valid'."""
    if strides > 1 and kernel_size > 1:
      x = self.fixed_padding(x, kernel_size)
    is_masked = self.masked and masked
    conv_class = masked_layers.MaskedConv2D if is_masked else keras.layers.Conv2D
    initializer = kernel_initializer or keras.initializers.VarianceScaling(
        scale=init_scale, mode='fan_in', distribution='truncated_normal')
    if is_masked or not self.masked:
      initializer = pick_initializer(initializer, self.init_method, self.pruning_method,
                                     self.end_sparsity)
    return conv_class(
        filters, kernel_size, strides=strides,
        padding='valid' if strides > 1 else 'same', use_bias=use_bias,
        kernel_initializer=initializer, data_format=self.data_format,
        kernel_regularizer=l2_regularizer(
            self.weight_decay if weight_decay is None else weight_decay),
        name=name)(x)

  def dense(self, x, units, name, kernel_initializer, masked=True):
    is_masked = self.masked and masked
    dense_class = masked_layers.MaskedDense if is_masked else keras.layers.Dense
    if is_masked or not self.masked:
      kernel_initializer = pick_initializer(kernel_initializer, self.init_method,
                                            self.pruning_method, self.end_sparsity)
    return dense_class(
        units, kernel_initializer=kernel_initializer, bias_initializer='zeros',
        kernel_regularizer=l2_regularizer(self.weight_decay), name=name)(x)

  def global_average_pool(self, x, name):
    """Average pooling over the whole feature map, flattened.

    The original's `average_pooling2d` with the map's size (an AvgPool op, whose sums
    are ordered differently from a reduce_mean's).
    """
    spatial = x.shape[2:] if self.data_format == 'channels_first' else x.shape[1:3]
    x = keras.layers.AveragePooling2D(tuple(spatial), strides=1, padding='valid',
                                      data_format=self.data_format, name=name)(x)
    return keras.layers.Flatten(data_format=self.data_format)(x)


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
               input_shape=(224, 224, 3), name='resnet_model', init_method='baseline',
               end_sparsity=0., data_format='channels_last', standardize_input=False):
  """ResNet v1 of `resnet_depth` (18, 34, 50, 101, 152 or 200) as a `keras.Model`.

  Args:
    resnet_depth: number of layers.
    num_classes: units of the final dense layer (logits, no softmax).
    pruning_method: 'baseline' (plain layers) or 'threshold' (masked layers).
    width: multiplier of every group's channel count (`int(64 * width)`, ...).
    prune_first_layer: with 'threshold', whether `initial_conv` is masked.
    prune_last_layer: with 'threshold', whether `final_dense` is masked.
    weight_decay: L2 scale; the loss gets `weight_decay * ||w||^2 / 2` per kernel.
    input_shape: shape of one channels-last image (the model transposes it itself
      for channels_first).
    name: name of the model.
    init_method, end_sparsity, data_format: see `LayerFactory`.
    standardize_input: the input is a [0, 255] RGB image (see `LayerFactory.inputs`).
  """
  if resnet_depth not in MODEL_PARAMS:
    raise ValueError(f'Unknown resnet_depth {resnet_depth!r}; choose one of '
                     f'{sorted(MODEL_PARAMS)}.')
  block_type, group_sizes = MODEL_PARAMS[resnet_depth]
  block_fn = bottleneck_block if block_type == 'bottleneck' else residual_block
  factory = LayerFactory(pruning_method, weight_decay, init_method, end_sparsity,
                         data_format)

  inputs, x = factory.inputs(input_shape, standardize_input)
  x = factory.conv2d_fixed_padding(x, int(64 * width), 7, 2, name='initial_conv',
                                   masked=prune_first_layer)
  x = factory.batch_norm_relu(x)
  x = keras.layers.MaxPooling2D(3, strides=2, padding='same', data_format=data_format,
                                name='initial_max_pool')(x)
  for group, (n_blocks, base_filters, strides) in enumerate(
      zip(group_sizes, (64, 128, 256, 512), (1, 2, 2, 2)), start=1):
    group_name = f'block_group{group}'
    filters = int(base_filters * width)
    x = block_fn(factory, x, filters, strides, use_projection=True,
                 block_name='block_group_projection_' + group_name)
    for block in range(1, n_blocks):
      x = block_fn(factory, x, filters, 1, use_projection=False,
                   block_name=f'{group_name}_{block}_1')
  x = factory.global_average_pool(x, 'final_avg_pool')
  logits = factory.dense(x, num_classes, 'final_dense',
                         keras.initializers.RandomNormal(stddev=0.01),
                         masked=prune_last_layer)
  return keras.Model(inputs, logits, name=name)
