"""TF1 checkpoints with the original's variable names, and forward passes in plain TF ops.

Written from the reference's description of the original (§3.10, §3.11), independently of
the project's models and loader: the names are spelled out here, the checkpoints are saved
by `tf.compat.v1` graph-mode `Saver`s, and the forward passes use `tf.nn` ops on the
arrays, with TF1's fused batch norm.
"""

import collections

import numpy as np
import tensorflow as tf

MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255


class Spec:
  """Layers of an original TF1 network, in creation order, and their arrays."""

  def __init__(self, seed):
    self.rng = np.random.RandomState(seed)
    self.arrays = collections.OrderedDict()
    self.batch_norms = 0
    self.scope = 'resnet_model'

  def conv(self, name, shape, masked, form='nested'):
    """A conv or dense kernel; returns the kernel actually applied (mask * weights)."""
    scope = f'{self.scope}/{name}'
    weights = self.rng.normal(0, np.sqrt(2.0 / np.prod(shape[:-1])), shape).astype(np.float32)
    if masked:
      mask = (self.rng.rand(*shape) > 0.6).astype(np.float32)
      self.arrays[f'{scope}/mask'] = mask
      self.arrays[f'{scope}/weights'] = weights  # non-zero where the mask is 0, as TF1's
      self.arrays[f'{scope}/threshold'] = np.float32(0)
      return weights * mask
    key = {'nested': f'{scope}/{name}/weights', 'tf_layers': f'{scope}/kernel',
           'contrib': f'{scope}/weights'}[form]
    self.arrays[key] = weights
    return weights

  def bias(self, name, size, masked, form='nested'):
    scope = f'{self.scope}/{name}'
    key = (f'{scope}/biases' if masked else
           {'nested': f'{scope}/{name}/biases', 'tf_layers': f'{scope}/bias',
            'contrib': f'{scope}/biases'}[form])
    self.arrays[key] = self.rng.normal(0, 0.1, size).astype(np.float32)
    return self.arrays[key]

  def depthwise(self, name, channels):
    key = f'{self.scope}/{name}/depthwise_weights'
    self.arrays[key] = self.rng.normal(0, 0.5, (3, 3, channels, 1)).astype(np.float32)
    return self.arrays[key]

  def batch_norm(self, channels):
    index = self.batch_norms
    self.batch_norms += 1
    scope = f'{self.scope}/batch_normalization' + (f'_{index}' if index else '')
    parts = {'gamma': self.rng.uniform(0.5, 1.5, channels),
             'beta': self.rng.normal(0, 0.1, channels),
             'moving_mean': self.rng.normal(0, 0.1, channels),
             'moving_variance': self.rng.uniform(0.5, 1.5, channels)}
    for part, value in parts.items():
      self.arrays[f'{scope}/{part}'] = value.astype(np.float32)
    return scope


def _bn(spec_arrays, scope, x, relu=True):
  y, _, _ = tf.compat.v1.nn.fused_batch_norm(
      x, spec_arrays[f'{scope}/gamma'], spec_arrays[f'{scope}/beta'],
      mean=spec_arrays[f'{scope}/moving_mean'],
      variance=spec_arrays[f'{scope}/moving_variance'], epsilon=1e-5, is_training=False)
  return tf.nn.relu(y) if relu else y


def _conv(x, kernel, stride):
  k = kernel.shape[0]
  if stride > 1:
    pad = k - 1
    x = tf.pad(x, [[0, 0], [pad // 2, pad - pad // 2], [pad // 2, pad - pad // 2], [0, 0]])
    return tf.nn.conv2d(x, kernel, stride, 'VALID')
  return tf.nn.conv2d(x, kernel, 1, 'SAME')


def _depthwise(x, kernel, stride):
  if stride > 1:
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    return tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], 'VALID')
  return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'SAME')


def _standardize(images):
  return (tf.constant(images, tf.float32) - MEAN_RGB) / STDDEV_RGB


def resnet(depth, width, classes, first_masked, last_masked, seed=0):
  """The arrays of a ResNet v1 TF1 checkpoint and its forward function."""
  spec = Spec(seed)
  plan = []  # (kind, ...) steps for the forward pass
  bottleneck = depth >= 50
  groups = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  stem = int(64 * width)
  plan.append(('conv', spec.conv('initial_conv', (7, 7, 3, stem), first_masked), 2,
               spec.batch_norm(stem), True))
  plan.append(('maxpool',))
  channels = stem
  for g, (blocks, base, stride) in enumerate(zip(groups, (64, 128, 256, 512), (1, 2, 2, 2)),
                                             start=1):
    filters = int(base * width)
    out = 4 * filters if bottleneck else filters
    kind = 'bottleneck' if bottleneck else 'residual'
    for b in range(blocks):
      name = f'block_group_projection_block_group{g}' if b == 0 else f'block_group{g}_{b}_1'
      s = stride if b == 0 else 1
      block = []
      if b == 0:
        block.append(('projection', spec.conv(f'{kind}_projection_{name}',
                                              (1, 1, channels, out), True), s,
                      spec.batch_norm(out)))
      if bottleneck:
        shapes = [(1, 1, channels, filters, 1), (3, 3, filters, filters, s),
                  (1, 1, filters, out, 1)]
      else:
        shapes = [(3, 3, channels, filters, s), (3, 3, filters, filters, 1)]
      for i, (kh, kw, cin, cout, st) in enumerate(shapes, start=1):
        block.append(('conv', spec.conv(f'{kind}_{i}_{name}', (kh, kw, cin, cout), True), st,
                      spec.batch_norm(cout), i < len(shapes)))
      plan.append(('block', block))
      channels = out
  head = (channels, classes, last_masked)

  def forward(images):
    x = _standardize(images)
    for step in plan:
      if step[0] == 'conv':
        x = _bn(spec.arrays, step[3], _conv(x, step[1], step[2]), step[4])
      elif step[0] == 'maxpool':
        x = tf.nn.max_pool2d(x, 3, 2, 'SAME')
      else:
        shortcut = x
        y = x
        for part in step[1]:
          if part[0] == 'projection':
            shortcut = _bn(spec.arrays, part[3], _conv(x, part[1], part[2]), False)
          else:
            y = _bn(spec.arrays, part[3], _conv(y, part[1], part[2]), part[4])
        x = tf.nn.relu(y + shortcut)
    return _forward_head(x)

  head_kernel = spec.conv('final_dense', (head[0], head[1]), last_masked)
  head_bias = spec.bias('final_dense', head[1], last_masked)

  def _forward_head(x):
    x = tf.reduce_mean(x, axis=[1, 2])
    return tf.matmul(x, head_kernel) + head_bias

  return spec.arrays, forward


def mobilenet_v1(width, classes, last_masked, seed=0):
  """The arrays of a MobileNet v1 TF1 checkpoint and its forward function."""
  spec = Spec(seed)
  blocks = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
            (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

  def divisible(v, d=8):
    r = max(d, int(v + d / 2) // d * d)
    return r + d if r < 0.9 * v else r

  stem = divisible(32 * width)
  plan = [(spec.conv('initial_conv', (3, 3, 3, stem), False, 'tf_layers'),
           spec.batch_norm(stem))]
  channels = stem
  layers_ = []
  for i, (filters, stride) in enumerate(blocks):
    dw = spec.depthwise(f'depthwise_nxn_{i}', channels)
    dw_bn = spec.batch_norm(channels)
    out = divisible(int(width * filters), 1 if i == 0 else 8)
    pw = spec.conv(f'contraction_1x1_{i}', (1, 1, channels, out), True)
    layers_.append((dw, stride, dw_bn, pw, spec.batch_norm(out)))
    channels = out
  form = 'nested' if last_masked else 'tf_layers'
  kernel = spec.conv('final_dense', (channels, classes), last_masked, form)
  bias = spec.bias('final_dense', classes, last_masked, form)

  def forward(images):
    x = _standardize(images)
    x = _bn(spec.arrays, plan[0][1], _conv(x, plan[0][0], 2))
    for dw, stride, dw_bn, pw, pw_bn in layers_:
      x = _bn(spec.arrays, dw_bn, _depthwise(x, dw, stride))
      x = _bn(spec.arrays, pw_bn, _conv(x, pw, 1))
    return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), kernel) + bias

  return spec.arrays, forward


def mobilenet_v2(width, classes, last_masked, expansion=6, seed=0):
  """The arrays of a MobileNet v2 TF1 checkpoint and its forward function."""
  spec = Spec(seed)
  blocks = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (32, 1), (64, 2), (64, 1), (64, 1),
            (64, 1), (96, 1), (96, 1), (96, 1), (160, 2), (160, 1), (160, 1), (320, 1))

  def divisible(v, d=8):
    r = max(d, int(v + d / 2) // d * d)
    return r + d if r < 0.9 * v else r

  depth = divisible(32 * width)
  stem = (spec.conv('initial_conv', (3, 3, 3, depth), False, 'tf_layers'),
          spec.batch_norm(depth))
  plan = []
  for i, (filters, stride) in enumerate(blocks):
    expand = None
    channels = depth
    if i > 0:
      channels = int(expansion * depth)
      expand = (spec.conv(f'expand_1x1_{i}', (1, 1, depth, channels), True),
                spec.batch_norm(channels))
    dw = (spec.depthwise(f'depthwise_nxn_{i}', channels), spec.batch_norm(channels))
    out = divisible(int(width * filters), 1 if i == 0 else 8)
    contract = (spec.conv(f'contraction_1x1_{i}', (1, 1, channels, out), True),
                spec.batch_norm(out))
    plan.append((expand, dw, stride, contract, depth == out and stride == 1))
    depth = out
  final_channels = max(1280, divisible(1280 * width, 8))
  final = (spec.conv('final_1x1_conv', (1, 1, depth, final_channels), True),
           spec.batch_norm(final_channels))
  form = 'nested' if last_masked else 'tf_layers'
  kernel = spec.conv('final_dense', (final_channels, classes), last_masked, form)
  bias = spec.bias('final_dense', classes, last_masked, form)

  def forward(images):
    x = _bn(spec.arrays, stem[1], _conv(_standardize(images), stem[0], 2))
    for expand, dw, stride, contract, residual in plan:
      y = x
      if expand:
        y = _bn(spec.arrays, expand[1], _conv(y, expand[0], 1))
      y = _bn(spec.arrays, dw[1], _depthwise(y, dw[0], stride))
      y = _bn(spec.arrays, contract[1], _conv(y, contract[0], 1), relu=False)
      x = y + x if residual else y
    x = _bn(spec.arrays, final[1], _conv(x, final[0], 1))
    return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), kernel) + bias

  return spec.arrays, forward


def vgg_a(width, classes, last_masked, seed=0):
  """The arrays of a VGG-A TF1 checkpoint (scope vgg_a) and its forward function."""
  spec = Spec(seed)
  spec.scope = 'vgg_a'
  convs = []
  channels = 3
  for group, (repeats, filters) in enumerate(zip((1, 1, 2, 2, 2), (64, 128, 256, 512, 512)),
                                             start=1):
    for r in range(1, repeats + 1):
      out = int(filters * width)
      convs.append((spec.conv(f'conv{group}/conv{group}_{r}', (3, 3, channels, out), True),
                    group))
      channels = out
  fc8 = spec.conv('fc8', (1, 1, channels, classes), last_masked, 'contrib')
  fc8_bias = None if last_masked else spec.bias('fc8', classes, False, 'contrib')

  def forward(images):
    x = _standardize(images)
    for i, (kernel, group) in enumerate(convs):
      x = tf.nn.relu(_conv(x, kernel, 1))
      last_of_group = i + 1 == len(convs) or convs[i + 1][1] != group
      if last_of_group and group < 5:
        x = tf.nn.max_pool2d(x, 2, 2, 'VALID')
    x = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    x = tf.nn.conv2d(x, fc8, 1, 'SAME')
    if fc8_bias is not None:
      x = x + fc8_bias
    return tf.squeeze(x, [1, 2])

  return spec.arrays, forward


def write(arrays, prefix, slots=True, extra=None, state_file=True):
  """Saves `arrays` under their names with a TF1 `Saver`, plus a training graph's state."""
  values = collections.OrderedDict(arrays)
  if slots:
    for name, value in arrays.items():
      if name.rsplit('/', 1)[-1] in ('weights', 'kernel', 'bias', 'biases', 'gamma', 'beta',
                                     'depthwise_weights'):
        values[f'{name}/Momentum'] = np.zeros_like(value)
    values['global_step'] = np.int64(3200000)
    values['last_mask_update_step'] = np.int64(2500000)
  values.update(extra or {})
  graph = tf.Graph()
  with graph.as_default():
    variables = [tf.compat.v1.Variable(value, name=name) for name, value in values.items()]
    saver = tf.compat.v1.train.Saver(variables)
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      saver.save(session, prefix, write_meta_graph=True, write_state=state_file)
  return prefix
