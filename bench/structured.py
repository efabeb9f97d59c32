"""Condensed layers (SRigL's constant-fan-in format) against dense, masked and CSR layers:
inference latency in TensorFlow and in LiteRT.

For each model, sparsity and batch, the same function in every form, side by side in one
process: the variants take turns in rounds (rotating order) after a warm-up that also
compiles, and each number is the median over all timed calls.

  TensorFlow, each model called in one `tf.function`:
    dense      plain `Dense` layers holding the masked model's kernels, zeros included;
    masked     `rigl.layers.MaskedDense`: the same zero-filled kernels (what a masked
               model computes at inference; the mask is not multiplied in);
    csr        `rigl.sparse_layers.SparseDense` (CSR products, `to_sparse_execution`;
               a training layer, it builds its CSR matrix at every call);
    condensed  `rigl.sparse_layers.to_condensed` (`CondensedDense`, the XLA loop).
  LiteRT, files from `rigl.export.to_tflite` run with `rigl.export.tflite_interpreter`:
    dense      the dense file (XNNPACK);
    sparse     the masked model with TFLite's sparse weights (`sparse=True`);
    condensed  the condensed model: LiteRT's builtin gather, multiply and sum, which
               build batch * k * units floats per layer; batches where that passes
               `--gather_limit_mib` are left out (marked "-").

Models: `layer`, one 4096x4096 `Dense` layer (bias, no activation); `wide_mlp`, the wide
MLP of bench/sparse_execution.py (4096-4096-4096-1000, ReLU). Every layer is at the same
sparsity with a constant-fan-in mask: each output neuron has k = floor(fan_in * (1 -
sparsity)) random inputs and none is ablated, so every variant holds the same nonzeros.
Each row also records how far each variant's outputs are from the masked model's.

Two more tables: `choices`, the implementations tried for the condensed product (the 4096
layer at 90%, TensorFlow and LiteRT), and `conv`, 1x1 convolutions of ResNet-50's sizes
condensed (`to_condensed(pointwise_convolutions=True)`) and a 3x3 one through image
patches (a prototype, not in the library) against `Conv2D`, at batch 1 and 90%.

The load average of the machine at the start and the end is recorded with the results.

  python bench/structured.py --out=bench/results/structured.json
"""

import bench_common  # pylint: disable=g-bad-import-order

import os
import time

import numpy as np

MODELS = {
    # name: (layer sizes, activation of the hidden layers, sparsities)
    'layer': ((4096, 4096), None, (0.5, 0.7, 0.8, 0.9, 0.95)),
    'wide_mlp': ((4096, 4096, 4096, 1000), 'relu', (0.8, 0.9, 0.95)),
}
QUICK_MODELS = {
    'layer': ((256, 256), None, (0.9,)),
    'wide_mlp': ((256, 256, 128, 10), 'relu', (0.9,)),
}
BATCHES, QUICK_BATCHES = (1, 256), (1, 8)
TF_VARIANTS = ('dense', 'masked', 'csr', 'condensed')
LITERT_VARIANTS = ('dense', 'sparse', 'condensed')
CHOICE_SPARSITY = 0.9
# Convolutions at batch 1: (name, input height/width, input channels, filters, kernel size).
CONVS = (('res4 1x1 reduce', 14, 1024, 256, 1), ('res4 1x1 expand', 14, 256, 1024, 1),
         ('res2 1x1 expand', 56, 64, 256, 1), ('res4 3x3 (patches)', 14, 256, 256, 3))
QUICK_CONVS = (('1x1', 8, 32, 16, 1), ('3x3 (patches)', 8, 16, 16, 3))


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--models', default='layer,wide_mlp')
  parser.add_argument('--sparsities', default='',
                      help='comma-separated; default: each model\'s own (see MODELS)')
  parser.add_argument('--rounds', type=int, default=None, help='default 25 (--quick: 2)')
  parser.add_argument('--seconds_per_turn', type=float, default=None,
                      help='roughly how long each variant runs per round; default 0.05 '
                      '(--quick: 0.01). Short turns spread the load of a shared machine '
                      'over all variants alike.')
  parser.add_argument('--gather_limit_mib', type=float, default=1024,
                      help='largest tensor an unfused gather (LiteRT\'s, TensorFlow\'s '
                      'without XLA) may build; variants past it are left out')
  parser.add_argument('--skip', default='',
                      help='comma-separated sections to leave out: choices, conv')
  return parser.parse_args()


# --- Timing ---------------------------------------------------------------------------------

class Timed:
  """One variant: a call that blocks until its result is ready, and its timings."""

  def __init__(self, name, call):
    self.name, self.call, self.ms = name, call, []

  def run(self, calls, record=True):
    for _ in range(calls):
      start = time.perf_counter()
      self.call()
      if record:
        self.ms.append(1e3 * (time.perf_counter() - start))


def race(timed, rounds, seconds_per_turn):
  """Median ms of each variant, timed in turns: rounds of every variant, rotating order.

  The warm-up (compilation, first allocations) also sizes each turn: as many calls as
  fit in `seconds_per_turn`, at least one.
  """
  calls = {}
  for t in timed:
    t.run(2, record=False)
    _, seconds = bench_common.timed(t.call)
    calls[t.name] = max(1, int(seconds_per_turn / max(seconds, 1e-6)))
  for r in range(rounds):
    for i in range(len(timed)):
      t = timed[(r + i) % len(timed)]
      t.run(calls[t.name])
  return {t.name: bench_common.median(t.ms) for t in timed}


def tensorflow_call(model, x):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  forward = tf.function(lambda inputs: model(inputs, training=False), autograph=False)
  inputs = tf.constant(x)
  return lambda: forward(inputs).numpy()


def litert_call(flatbuffer, x, threads):
  from rigl import export  # pylint: disable=g-import-not-at-top
  interpreter = export.tflite_interpreter(flatbuffer, num_threads=threads)
  index = interpreter.get_input_details()[0]['index']
  interpreter.resize_tensor_input(index, x.shape)
  interpreter.allocate_tensors()
  output = interpreter.get_output_details()[0]['index']

  def call():
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(output)

  return call


# --- Models ---------------------------------------------------------------------------------

def set_constant_fan_in_masks(model, sparsity, seed=0):
  """Gives every masked layer of `model` a random constant-fan-in mask: each output
  neuron floor(fan_in * (1 - sparsity)) inputs (a convolution's matrix view: its rows are
  kernel positions and input channels)."""
  from rigl import layers  # pylint: disable=g-import-not-at-top
  from rigl import masking  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  for layer in layers.masked_layers(model):
    shape = tuple(layer.mask.shape)
    fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
    k = int(np.floor(fan_in * (1 - sparsity) + 1e-9))
    rows = np.argpartition(rng.rand(fan_in, fan_out), k - 1, axis=0)[:k]
    mask = np.zeros((fan_in, fan_out), np.float32)
    np.put_along_axis(mask, rows, 1.0, axis=0)
    masking.set_mask(layer.kernel_variable, mask.reshape(shape))


def masked_mlp(sizes, activation, sparsity):
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = keras.Sequential(
      [keras.Input((sizes[0],))] +
      [layers.MaskedDense(n, activation=activation if i < len(sizes) - 2 else None,
                          bias_initializer='random_normal', name=f'layer{i}')
       for i, n in enumerate(sizes[1:])])
  set_constant_fan_in_masks(model, sparsity)
  return model


def variants(masked):
  """The four TensorFlow forms of one masked model."""
  from rigl import export  # pylint: disable=g-import-not-at-top
  from rigl import sparse_layers  # pylint: disable=g-import-not-at-top
  return {'dense': export.strip_masks(masked), 'masked': masked,
          'csr': sparse_layers.to_sparse_execution(masked),
          'condensed': sparse_layers.to_condensed(masked, min_sparsity=0, verbose=False)}


def largest_gather_mib(condensed, batch):
  """MiB of the largest tensor LiteRT's gather builds in one of the condensed layers."""
  from rigl import sparse_layers  # pylint: disable=g-import-not-at-top
  return max(batch * l.fan_in * l.active_units * 4
             for l in sparse_layers.condensed_layers(condensed)) / 2**20


def measure_model(name, sizes, activation, sparsity, batches, args):
  from rigl import export  # pylint: disable=g-import-not-at-top
  masked = masked_mlp(sizes, activation, sparsity)
  models = variants(masked)
  flatbuffers = {'dense': export.to_tflite(models['dense'], sparse=False),
                 'sparse': export.to_tflite(masked, sparse=True),
                 'condensed': export.to_tflite(models['condensed'])}
  rows = []
  for batch in batches:
    x = np.random.RandomState(batch).randn(batch, sizes[0]).astype(np.float32)
    expected = masked(x, training=False).numpy()
    tf_calls = {v: tensorflow_call(models[v], x) for v in TF_VARIANTS}
    litert_variants = [v for v in LITERT_VARIANTS if v != 'condensed' or
                       largest_gather_mib(models['condensed'], batch)
                       <= args.gather_limit_mib]
    litert_calls = {v: litert_call(flatbuffers[v], x, args.threads) for v in litert_variants}
    differences = {f'tf_{v}': float(np.abs(call() - expected).max())
                   for v, call in tf_calls.items()}
    differences.update({f'litert_{v}': float(np.abs(call() - expected).max())
                        for v, call in litert_calls.items()})
    tf_ms = race([Timed(v, c) for v, c in tf_calls.items()], args.rounds,
                 args.seconds_per_turn)
    litert_ms = race([Timed(v, c) for v, c in litert_calls.items()], args.rounds,
                     args.seconds_per_turn)
    row = {'model': name, 'layer_sizes': list(sizes), 'sparsity': sparsity,
           'batch': batch, 'tensorflow_ms': tf_ms, 'litert_ms': litert_ms,
           'max_abs_difference_from_masked': differences,
           'litert_condensed_gather_mib': largest_gather_mib(models['condensed'], batch)}
    rows.append(row)
    print(f'{name} {sparsity} batch {batch}: TF ' +
          ', '.join(f'{v} {ms:.3g} ms' for v, ms in tf_ms.items()) + '; LiteRT ' +
          ', '.join(f'{v} {ms:.3g} ms' for v, ms in litert_ms.items()), flush=True)
  return rows


def ratio(numerator, denominator):
  return None if numerator is None or denominator is None else numerator / denominator


def model_table(rows):
  header = ['model', 'sparsity', 'batch', 'TF dense ms', 'masked ms', 'CSR ms',
            'condensed ms', 'dense / condensed', 'CSR / condensed', 'LiteRT dense ms',
            'sparse ms', 'condensed ms', 'dense / condensed']
  table = []
  for row in rows:
    tf_ms, lite = row['tensorflow_ms'], row['litert_ms']
    cells = [row['model'], row['sparsity'], row['batch'], tf_ms['dense'], tf_ms['masked'],
             tf_ms['csr'], tf_ms['condensed'], ratio(tf_ms['dense'], tf_ms['condensed']),
             ratio(tf_ms['csr'], tf_ms['condensed']), lite['dense'], lite['sparse'],
             lite.get('condensed'), ratio(lite['dense'], lite.get('condensed'))]
    table.append(['-' if c is None else c for c in cells])
  return bench_common.markdown_table(header, table)


# --- Implementation choices -----------------------------------------------------------------

def condensed_arrays(n_in, units, sparsity, seed=0):
  """(dense kernel, values, indices) of a random constant-fan-in layer; values and
  indices [k, units] as `CondensedDense` holds them."""
  rng = np.random.RandomState(seed)
  k = int(np.floor(n_in * (1 - sparsity) + 1e-9))
  indices = np.sort(np.argpartition(rng.rand(n_in, units), k - 1, axis=0)[:k], axis=0)
  values = rng.randn(k, units).astype(np.float32)
  kernel = np.zeros((n_in, units), np.float32)
  np.put_along_axis(kernel, indices, values, axis=0)
  return kernel, values, indices.astype(np.int32)


def choice_functions(kernel, values, indices):
  """{name: (function of x, jit_compile, materialises rows * k * units)}: the condensed
  product in the forms tried; the library's two first."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import sparse_layers  # pylint: disable=g-import-not-at-top
  dense = tf.constant(kernel)
  v_slot_major, i16 = tf.constant(values), tf.constant(indices.astype(np.int16))
  i32 = tf.constant(indices)
  half = values.shape[1] // 2
  halves = [(tf.constant(values[:, s]), tf.constant(indices[:, s].astype(np.int16)))
            for s in (slice(0, half), slice(half, None))]
  # SRigL's layout: [units, k].
  v_neuron_major, i_neuron_major = tf.constant(values.T), tf.constant(indices.T)
  loop = sparse_layers._condensed_loop  # pylint: disable=protected-access
  xla_loop = sparse_layers._condensed_xla_loop  # pylint: disable=protected-access
  gather = sparse_layers._condensed_gather  # pylint: disable=protected-access

  def srigl_gather(x):
    return tf.reduce_sum(tf.gather(x, i_neuron_major, axis=1) * v_neuron_major, -1)

  def srigl_einsum(x):
    return tf.einsum('buk,uk->bu', tf.gather(x, i_neuron_major, axis=1), v_neuron_major)

  def rows_of_transpose_matmul(x):
    gathered = tf.gather(tf.transpose(x), i_neuron_major)  # [units, k, rows]
    return tf.transpose(tf.squeeze(tf.matmul(v_neuron_major[:, None, :], gathered), 1))

  return {
      'loop, 8 slots a step, int16 (library: xla_loop)': (
          lambda x: xla_loop(x, v_slot_major, i16), False, False),
      'gather [rows, k, units] + mul + sum (library: gather)': (
          lambda x: gather(x, v_slot_major, i16), False, True),
      'loop, 1 slot a step': (lambda x: xla_loop(x, v_slot_major, i16, 1), False, False),
      'loop, 4 slots a step': (lambda x: xla_loop(x, v_slot_major, i16, 4), False, False),
      'loop, 16 slots a step': (lambda x: xla_loop(x, v_slot_major, i16, 16), False, False),
      'loop, int32 indices': (lambda x: xla_loop(x, v_slot_major, i32), False, False),
      'loop, neurons in halves: 2 XLA calls at once': (
          lambda x: tf.concat([xla_loop(x, v, i) for v, i in halves], 1), False, False),
      'loop, no XLA': (lambda x: loop(x, v_slot_major, i16), False, False),
      'gather [rows, k, units] + mul + sum, XLA': (
          lambda x: gather(x, v_slot_major, i16), True, True),
      'gather [rows, units, k] + mul + sum (SRigL)': (srigl_gather, False, True),
      'gather [rows, units, k] + mul + sum (SRigL), XLA': (srigl_gather, True, True),
      'gather [rows, units, k] + einsum': (srigl_einsum, False, True),
      'gather [rows, units, k] + einsum, XLA': (srigl_einsum, True, True),
      'gather rows of x^T [units, k, rows] + batched matmul': (
          rows_of_transpose_matmul, False, True),
      'gather rows of x^T [units, k, rows] + batched matmul, XLA': (
          rows_of_transpose_matmul, True, True),
      'dense matmul (reference)': (lambda x: tf.matmul(x, dense), False, False),
  }


def litert_choice_files(values, indices, n_in):
  """{name: TFLite flatbuffer} of the gather layouts in LiteRT (batch of any size)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def convert(fn):
    concrete = tf.function(fn, autograph=False).get_concrete_function(
        tf.TensorSpec([None, n_in], tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()

  slot_major_values = tf.constant(values)
  slot_major_indices = tf.constant(indices.astype(np.int16))
  neuron_major_values, neuron_major_indices = tf.constant(values.T), tf.constant(indices.T)
  return {
      'gather [rows, k, units] + mul + sum (library)': convert(
          lambda x: tf.reduce_sum(tf.gather(x, slot_major_indices, axis=1) *
                                  slot_major_values, 1)),
      'gather [rows, units, k] + mul + sum (SRigL)': convert(
          lambda x: tf.reduce_sum(tf.gather(x, neuron_major_indices, axis=1) *
                                  neuron_major_values, -1)),
      'gather [rows, units, k] + einsum (batched matmul)': convert(
          lambda x: tf.einsum('buk,uk->bu', tf.gather(x, neuron_major_indices, axis=1),
                              neuron_major_values)),
  }


def measure_choices(n_in, batches, args):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  kernel, values, indices = condensed_arrays(n_in, n_in, CHOICE_SPARSITY)
  functions = choice_functions(kernel, values, indices)
  files = litert_choice_files(values, indices, n_in)
  results = {}
  for batch in batches:
    x_np = np.random.RandomState(batch).randn(batch, n_in).astype(np.float32)
    x = tf.constant(x_np)
    expected = x_np @ kernel
    timed, skipped = [], []
    for name, (fn, jit, materialises) in functions.items():
      if materialises and not jit and (batch * values.size * 4 / 2**20 >
                                       args.gather_limit_mib):
        skipped.append(name)
        continue
      compiled = tf.function(fn, jit_compile=jit, autograph=False)
      difference = float(np.abs(compiled(x).numpy() - expected).max())
      if difference > 1e-3 * max(1.0, float(np.abs(expected).max())):
        raise RuntimeError(f'{name}: outputs differ from the dense product by {difference}')
      timed.append(Timed(name, lambda c=compiled: c(x).numpy()))
    for name, flatbuffer in files.items():
      if batch * values.size * 4 / 2**20 > args.gather_limit_mib:
        skipped.append('LiteRT ' + name)
        continue
      timed.append(Timed('LiteRT ' + name, litert_call(flatbuffer, x_np, args.threads)))
    results[batch] = race(timed, args.rounds, args.seconds_per_turn)
    results[batch].update({name: None for name in skipped})
    print(f'choices batch {batch}: ' + ', '.join(
        f'{name} {"-" if ms is None else f"{ms:.3g}"} ms'
        for name, ms in results[batch].items()), flush=True)
  return results


def choices_table(results):
  batches = sorted(results)
  names = list(results[batches[0]])
  table = [[name] + [('-' if results[b][name] is None else results[b][name]) for b in batches]
           for name in names]
  return bench_common.markdown_table(
      ['implementation'] + [f'batch {b} ms' for b in batches], table)


# --- Convolutions ---------------------------------------------------------------------------

def measure_conv(name, size, channels, filters, kernel_size, args):
  """A (masked) Conv2D at 90% against its condensed form, batch 1: for a 1x1 kernel the
  library's `CondensedPointwiseConv2D` (TensorFlow and LiteRT); for a larger one a
  prototype, image patches then the condensed loop (TensorFlow only: LiteRT has no
  patch extraction among its builtins)."""
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import export  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  from rigl import sparse_layers  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  masked = keras.Sequential([keras.Input((size, size, channels)),
                             layers.MaskedConv2D(filters, kernel_size, padding='same')])
  set_constant_fan_in_masks(masked, CHOICE_SPARSITY)
  dense = export.strip_masks(masked)
  x = np.random.RandomState(0).randn(1, size, size, channels).astype(np.float32)
  expected = masked(x).numpy()
  calls = {'dense': tensorflow_call(dense, x)}
  litert = {}
  if kernel_size == 1:
    condensed = sparse_layers.to_condensed(masked, min_sparsity=0,
                                           pointwise_convolutions=True, verbose=False)
    calls['condensed'] = tensorflow_call(condensed, x)
    litert = {'dense': litert_call(export.to_tflite(dense, sparse=False), x, args.threads),
              'condensed': litert_call(export.to_tflite(condensed), x, args.threads)}
  else:
    calls['condensed'] = patches_then_condensed(masked.layers[0], x)
  for call in list(calls.values()) + list(litert.values()):
    difference = float(np.abs(call() - expected).max())
    if difference > 1e-3 * max(1.0, float(np.abs(expected).max())):
      raise RuntimeError(f'{name}: outputs differ from the masked convolution by '
                         f'{difference}')
  tf_ms = race([Timed(v, c) for v, c in calls.items()], args.rounds, args.seconds_per_turn)
  litert_ms = (race([Timed(v, c) for v, c in litert.items()], args.rounds,
                    args.seconds_per_turn) if litert else {})
  print(f'conv {name}: TF {tf_ms}; LiteRT {litert_ms}', flush=True)
  return {'conv': name, 'input': [1, size, size, channels], 'filters': filters,
          'kernel_size': kernel_size, 'sparsity': CHOICE_SPARSITY,
          'tensorflow_ms': tf_ms, 'litert_ms': litert_ms}


def patches_then_condensed(conv, x):
  """The prototype for a k x k convolution: `tf.image.extract_patches` gives each pixel's
  receptive field in the kernel's (row, column, channel) order, the rows of its matrix
  view, and the condensed loop runs on those."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import sparse_layers  # pylint: disable=g-import-not-at-top
  kernel = conv.kernel_variable.numpy() * conv.mask.numpy()
  matrix = kernel.reshape(-1, kernel.shape[-1])
  mask = conv.mask.numpy().reshape(matrix.shape) > 0.5
  k = int(mask[:, 0].sum())
  rows = np.nonzero(mask.T)[1].reshape(mask.shape[1], k).T
  values = tf.constant(np.take_along_axis(matrix, rows, axis=0))
  indices = tf.constant(rows.astype(np.int16))
  bias = tf.constant(conv.bias.numpy())
  size = conv.kernel_size[0]
  xla_loop = sparse_layers._condensed_xla_loop  # pylint: disable=protected-access

  @tf.function(autograph=False)
  def forward(images):
    patches = tf.image.extract_patches(images, [1, size, size, 1], [1, 1, 1, 1],
                                       [1, 1, 1, 1], 'SAME')
    shape = tf.shape(patches)
    flat = tf.reshape(patches, [-1, patches.shape[-1]])
    outputs = xla_loop(flat, values, indices) + bias
    return tf.reshape(outputs, tf.concat([shape[:-1], [values.shape[1]]], 0))

  inputs = tf.constant(x)
  return lambda: forward(inputs).numpy()


def conv_table(rows):
  table = [[r['conv'], 'x'.join(map(str, r['input'][1:])) + f' -> {r["filters"]}',
            r['tensorflow_ms']['dense'], r['tensorflow_ms']['condensed'],
            ratio(r['tensorflow_ms']['dense'], r['tensorflow_ms']['condensed']),
            r['litert_ms'].get('dense', '-'), r['litert_ms'].get('condensed', '-'),
            ratio(r['litert_ms'].get('dense'), r['litert_ms'].get('condensed')) or '-']
           for r in rows]
  return bench_common.markdown_table(
      ['convolution', 'input -> filters', 'TF dense ms', 'condensed ms',
       'dense / condensed', 'LiteRT dense ms', 'condensed ms', 'dense / condensed'], table)


def main():
  args = parse_args()
  if args.rounds is None:
    args.rounds = 2 if args.quick else 25
  if args.seconds_per_turn is None:
    args.seconds_per_turn = 0.01 if args.quick else 0.05
  bench_common.limit_tensorflow_threads(args.threads)
  models = QUICK_MODELS if args.quick else MODELS
  batches = QUICK_BATCHES if args.quick else BATCHES
  skip = set(filter(None, args.skip.split(',')))
  results = {'config': {
      'command': bench_common.command_line(), 'threads': args.threads, 'quick': args.quick,
      'rounds': args.rounds, 'seconds_per_turn': args.seconds_per_turn,
      'gather_limit_mib': args.gather_limit_mib,
      'note': 'TensorFlow and LiteRT use --threads threads each; numbers of one table '
              'were measured side by side, so their ratios are what to compare',
  }, 'machine': bench_common.machine(), 'load_average_start': os.getloadavg(),
             'rows': [], 'choices': {}, 'conv': []}
  for name in args.models.split(','):
    sizes, activation, sparsities = models[name]
    if args.sparsities:
      sparsities = tuple(float(s) for s in args.sparsities.split(','))
    for sparsity in sparsities:
      results['rows'] += measure_model(name, sizes, activation, sparsity, batches, args)
  tables = [model_table(results['rows'])]
  if 'choices' not in skip:
    n_in = models['layer'][0][0]
    results['choices'] = {str(b): ms for b, ms in measure_choices(n_in, batches,
                                                                 args).items()}
    tables.append(f'Implementations of the condensed product ({n_in}x{n_in}, sparsity '
                  f'{CHOICE_SPARSITY})\n\n' + choices_table(
                      {int(b): ms for b, ms in results['choices'].items()}))
  if 'conv' not in skip:
    for conv in (QUICK_CONVS if args.quick else CONVS):
      results['conv'].append(measure_conv(*conv, args))
    tables.append(f'Convolutions at batch 1, sparsity {CHOICE_SPARSITY}\n\n' +
                  conv_table(results['conv']))
  results['load_average_end'] = os.getloadavg()
  bench_common.write_results(args.out, results, '\n\n'.join(tables))


if __name__ == '__main__':
  main()
