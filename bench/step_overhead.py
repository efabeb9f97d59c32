"""Cost of sparse training: masked steps of every kind against a plain dense Keras step.

For the MNIST MLP (784-300-100-10, batch 100), ResNet-50 (64x64 inputs, batch 16) and a
transformer encoder (2 blocks of `MultiHeadAttention` and a feed-forward network, width
128, 4 heads, sequences of 64, batch 32; every kernel masked with
`rigl.masking.sparsify_model`) the same architecture is trained several ways, side by side
in one process:

  dense         a plain Keras model with a plain optimizer (SGD, momentum 0.9);
  dense_again   the same, a second copy: the spread between the two is the noise floor
                of this machine, against which the other ratios are to be read;
  static        masked layers and `SparseStaticOptimizer` with a fixed mask (no updates);
  set           masked layers and `SparseSETOptimizer`, a mask update every 100 steps;
  rigl          masked layers and `SparseRigLOptimizer`, a mask update every 100 steps;
                both run as `rigl.train_lib` runs them: the steps where no update can
                be due use a copy of the step without the update test
                (`rigl.mask_update_dispatch`);
  keras_resnet  (ResNet-50 only) `keras.applications.ResNet50(weights=None)`, to compare
                this project's dense ResNet-50 with Keras' own.

Sparse variants use uniform 90% masks, drop fraction 0.3. The variants take turns in
rounds (the order rotates every round); in a round each runs a window of `frequency`
(= 100) consecutive steps, every step timed on its own (one `tf.function` call and a
wait for its result). Window times include the window's one mask update (amortized);
ratios are paired per round (slow phases of a shared machine cancel) and every figure is
a median over rounds, after a warm-up window per variant that traces both branches.
Inputs are a fixed random batch: the speed of a step does not depend on the data.
ResNet models here have no weight decay, as Keras' ResNet50 has none.

  python bench/step_overhead.py --rounds_mlp=60 --rounds_resnet50=6 \
      --out=bench/results/step_overhead.json
  python bench/step_overhead.py --jit_compile --models=mlp --rounds_mlp=60 \
      --out=bench/results/step_overhead_jit.json
  python bench/step_overhead.py --jit_compile --models=resnet50 --rounds_resnet50=3 \
      --variants=dense,dense_again,static,set,rigl \
      --out=bench/results/step_overhead_jit_resnet50.json
  python bench/step_overhead.py --models=transformer --rounds_transformer=30 \
      --out=bench/results/step_overhead_transformer.json
"""

import bench_common  # pylint: disable=unused-import,g-bad-import-order

import time

import numpy as np

SPARSE_VARIANTS = ('static', 'set', 'rigl')
DYNAMIC = ('set', 'rigl')


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--models', default='mlp,resnet50,transformer',
                      help='comma-separated subset of mlp,resnet50,transformer')
  parser.add_argument('--rounds_mlp', type=int, default=30)
  parser.add_argument('--rounds_resnet50', type=int, default=3)
  parser.add_argument('--rounds_transformer', type=int, default=30)
  parser.add_argument('--frequency', type=int, default=100,
                      help='steps between mask updates (the window of a round)')
  parser.add_argument('--jit_compile', action='store_true',
                      help='compile every train step with XLA')
  parser.add_argument('--variants', default='',
                      help='comma-separated subset of the variants (default: all)')
  return parser.parse_args()


def variants(model_name, chosen=''):
  extra = ('keras_resnet',) if model_name == 'resnet50' else ()
  every = ('dense', 'dense_again') + SPARSE_VARIANTS + extra
  if not chosen:
    return every
  subset = tuple(v for v in every if v in chosen.split(','))
  if 'dense' not in subset:
    raise SystemExit(f'--variants must include dense (the reference), got {chosen!r}')
  return subset


def build_model(name, variant, quick):
  """The model and one (inputs, labels) batch."""
  import keras  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  masked = variant in SPARSE_VARIANTS
  keras.utils.set_random_seed(0)
  if name == 'mlp':
    from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
    model = mnist_model.build_model(masked=masked)
    batch = 100
    x = rng.uniform(size=(batch, 784)).astype(np.float32)
    y = rng.randint(0, 10, size=batch).astype(np.int32)
    return model, x, y
  if name == 'transformer':
    return transformer(masked, quick, rng)
  depth, size, batch = (18, 32, 2) if quick else (50, 64, 16)
  if variant == 'keras_resnet':
    # Quick mode has no Keras ResNet-18; ResNet50 at 32x32 still checks the path.
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3),
                                        classes=1000, classifier_activation=None)
  else:
    from rigl.imagenet_resnet import resnet_model  # pylint: disable=g-import-not-at-top
    model = resnet_model.resnet_v1_(
        depth, 1000, pruning_method='threshold' if masked else 'baseline',
        prune_first_layer=False, input_shape=(size, size, 3))
  x = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
  y = rng.randint(0, 1000, size=batch).astype(np.int32)
  return model, x, y


def transformer(masked, quick, rng):
  """A 2-block encoder classifier on random sequences; masked: every kernel marked."""
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import masking  # pylint: disable=g-import-not-at-top
  width, heads, length, batch = (16, 2, 8, 4) if quick else (128, 4, 64, 32)
  inputs = keras.Input((length, width))
  x = inputs
  for _ in range(2):
    attention = keras.layers.MultiHeadAttention(heads, width // heads)(x, x)
    x = keras.layers.LayerNormalization()(x + attention)
    hidden = keras.layers.Dense(4 * width, activation='relu')(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(width)(hidden))
  logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling1D()(x))
  model = keras.Model(inputs, logits)
  if masked:
    masking.sparsify_model(model, verbose=False)
  x = rng.uniform(size=(batch, length, width)).astype(np.float32)
  y = rng.randint(0, 10, size=batch).astype(np.int32)
  return model, x, y


def build_optimizer(variant, frequency):
  """The variant's optimizer; the sparse ones initialise uniform 90% masks."""
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import sparse_optimizers as so  # pylint: disable=g-import-not-at-top
  inner = keras.optimizers.SGD(0.01, momentum=0.9)
  if variant not in SPARSE_VARIANTS:
    return inner
  masks = dict(default_sparsity=0.9, mask_init_method='random')
  if variant == 'static':
    # A fixed mask: the only update the schedule allows (step 0) would change nothing.
    return so.SparseStaticOptimizer(inner, begin_step=0, end_step=0, frequency=1,
                                    drop_fraction=0.0, **masks)
  cls = so.SparseSETOptimizer if variant == 'set' else so.SparseRigLOptimizer
  return cls(inner, begin_step=0, end_step=1_000_000, frequency=frequency,
             drop_fraction=0.3, drop_fraction_anneal='cosine', **masks)


class Runner:
  """One variant: runs windows of steps and keeps every step's time."""

  def __init__(self, model_name, variant, args):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.variant = variant
    model, x, y = build_model(model_name, variant, args.quick)
    self.optimizer = build_optimizer(variant, args.frequency)
    self.step = bench_common.train_step(model, self.optimizer, args.jit_compile)
    self.x, self.y = tf.constant(x), tf.constant(y)
    self.window_ms, self.step_ms, self.update_ms = [], [], []

  def run_window(self, steps, record=True):
    total = 0.0
    for _ in range(steps):
      before = self._last_update()
      start = time.perf_counter()
      self.step(self.x, self.y).numpy()
      seconds = time.perf_counter() - start
      total += seconds
      is_update = self._last_update() != before
      if record:
        (self.update_ms if is_update else self.step_ms).append(1e3 * seconds)
    if record:
      self.window_ms.append(1e3 * total / steps)

  def _last_update(self):
    # Created when the optimizer is built, on the first step.
    last = getattr(self.optimizer, 'last_mask_update_step', None)
    return None if last is None else int(last)


def measure(model_name, args):
  rounds = 2 if args.quick else getattr(args, f'rounds_{model_name}')
  window = args.frequency
  runners = {v: Runner(model_name, v, args) for v in variants(model_name, args.variants)}
  order = list(runners.values())
  for runner in order:
    runner.run_window(window, record=False)
  for r in range(rounds):
    for i in range(len(order)):
      order[(r + i) % len(order)].run_window(window)
  med = bench_common.median
  dense = runners['dense']
  result = {'rounds': rounds, 'window_steps': window}
  for name, runner in runners.items():
    numbers = {'ms_amortized': med(runner.window_ms), 'ms_median_step': med(runner.step_ms),
               'ratio_amortized': med([a / d for a, d in zip(runner.window_ms,
                                                             dense.window_ms)])}
    if name in DYNAMIC:
      if len(runner.update_ms) != rounds:
        raise RuntimeError(f'{name}: expected one mask update per window, got '
                           f'{len(runner.update_ms)} in {rounds}')
      numbers['update_ms'] = med(runner.update_ms)
      numbers['ratio_median_step'] = numbers['ms_median_step'] / med(dense.step_ms)
    result[name] = numbers
  return result


def main():
  args = parse_args()
  if args.quick:
    args.frequency = 5
  bench_common.limit_tensorflow_threads(args.threads)
  results = {'config': {
      'command': bench_common.command_line(),
      'threads': args.threads, 'jit_compile': args.jit_compile,
      'frequency': args.frequency, 'quick': args.quick,
      'optimizer': 'SGD(0.01, momentum=0.9); sparse: 90% uniform masks',
      'mlp': 'FC 784-300-100-10, batch 100, random inputs, L2 1e-4',
      'resnet50': ('quick: ResNet-18 at 32x32, batch 2 (keras_resnet: ResNet50)'
                   if args.quick else
                   'ResNet-50 v1, 64x64x3 inputs, batch 16, 1000 classes, no weight decay'),
      'transformer': ('quick: width 16, 2 heads, sequences of 8, batch 4' if args.quick else
                      '2 encoder blocks (MultiHeadAttention, FFN 512), width 128, 4 heads, '
                      'sequences of 64, batch 32, 10 classes; all 13 kernels masked'),
  }, 'machine': bench_common.machine(), 'models': {}}
  rows = []
  for model_name in args.models.split(','):
    result = measure(model_name, args)
    results['models'][model_name] = result
    for name in variants(model_name, args.variants):
      numbers = result[name]
      rows.append([model_name, name, numbers['ms_median_step'],
                   numbers.get('update_ms', '-'), numbers['ms_amortized'],
                   numbers['ratio_amortized']])
  table = bench_common.markdown_table(
      ['model', 'variant', 'step_ms (median)', 'update_ms', 'ms_amortized',
       'ratio_amortized (vs dense)'], rows)
  bench_common.write_results(args.out, results, table)


if __name__ == '__main__':
  main()
