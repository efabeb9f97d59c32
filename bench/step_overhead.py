"""Cost of sparse training: a masked RigL step against a plain dense Keras step.

For the MNIST MLP (784-300-100-10, batch 100) and ResNet-50 (64x64 inputs, batch 16) the
same architecture is trained three ways, side by side in one process:

  dense   a plain Keras model with a plain optimizer (SGD, momentum 0.9);
  static  masked layers and `SparseStaticOptimizer` with a fixed mask (no updates);
  rigl    masked layers and `SparseRigLOptimizer`, a mask update every 100 steps.

The variants take turns in rounds (the order rotates every round); in a round each runs a
window of `frequency` (= 100) consecutive steps, every step timed on its own. All times are
medians over rounds, taken after a warm-up window per variant (which traces both of RigL's
branches). Inputs are a fixed random batch: the speed of a step does not depend on the data.

  python bench/step_overhead.py --out=bench/results/step_overhead.json
"""

import bench_common  # pylint: disable=unused-import,g-bad-import-order

import sys
import time

import numpy as np

VARIANTS = ('dense', 'static', 'rigl')


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--models', default='mlp,resnet50',
                      help='comma-separated subset of mlp,resnet50')
  parser.add_argument('--rounds_mlp', type=int, default=30)
  parser.add_argument('--rounds_resnet50', type=int, default=3)
  parser.add_argument('--frequency', type=int, default=100,
                      help='RigL steps between mask updates (the window of a round)')
  parser.add_argument('--jit_compile', action='store_true',
                      help='compile every train step with XLA')
  return parser.parse_args()


def build_model(name, masked, quick):
  """The model and one (inputs, labels) batch."""
  import keras  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  if name == 'mlp':
    from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
    model = mnist_model.build_model(masked=masked)
    batch = 100
    x = rng.uniform(size=(batch, 784)).astype(np.float32)
    y = rng.randint(0, 10, size=batch).astype(np.int32)
    return model, x, y
  from rigl.imagenet_resnet import resnet_model  # pylint: disable=g-import-not-at-top
  depth, size, batch = (18, 32, 2) if quick else (50, 64, 16)
  keras.utils.set_random_seed(0)
  model = resnet_model.resnet_v1_(
      depth, 1000, pruning_method='threshold' if masked else 'baseline',
      prune_first_layer=False, weight_decay=1e-4, input_shape=(size, size, 3))
  x = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
  y = rng.randint(0, 1000, size=batch).astype(np.int32)
  return model, x, y


def build_optimizer(variant, frequency):
  """The variant's optimizer; the sparse ones initialise uniform 90% masks."""
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import sparse_optimizers as so  # pylint: disable=g-import-not-at-top
  inner = keras.optimizers.SGD(0.01, momentum=0.9)
  if variant == 'dense':
    return inner
  masks = dict(default_sparsity=0.9, mask_init_method='random')
  if variant == 'static':
    # A fixed mask: the only update the schedule allows (step 0) would change nothing.
    return so.SparseStaticOptimizer(inner, begin_step=0, end_step=0, frequency=1,
                                    drop_fraction=0.0, **masks)
  return so.SparseRigLOptimizer(inner, begin_step=0, end_step=1_000_000,
                                frequency=frequency, drop_fraction=0.3,
                                drop_fraction_anneal='cosine', **masks)


def make_step(model, optimizer, jit_compile):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function(jit_compile=jit_compile)
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True))
      if model.losses:
        loss += tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return loss

  return step


class Runner:
  """One variant: runs windows of steps and keeps every step's time."""

  def __init__(self, model_name, variant, args):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.variant = variant
    model, x, y = build_model(model_name, variant != 'dense', args.quick)
    self.optimizer = build_optimizer(variant, args.frequency)
    self.step = make_step(model, self.optimizer, args.jit_compile)
    self.x, self.y = tf.constant(x), tf.constant(y)
    self.window_ms, self.step_ms, self.update_ms = [], [], []

  def run_window(self, steps, record=True):
    total = 0.0
    for _ in range(steps):
      before = int(self.optimizer.iterations)
      start = time.perf_counter()
      self.step(self.x, self.y).numpy()
      seconds = time.perf_counter() - start
      total += seconds
      # A RigL update replaces the weight step, so the counter stays where it was.
      is_update = self.variant == 'rigl' and int(self.optimizer.iterations) == before
      if record:
        (self.update_ms if is_update else self.step_ms).append(1e3 * seconds)
    if record:
      self.window_ms.append(1e3 * total / steps)


def measure(model_name, args):
  rounds = 2 if args.quick else getattr(args, f'rounds_{model_name}')
  window = args.frequency
  runners = [Runner(model_name, v, args) for v in VARIANTS]
  for runner in runners:
    runner.run_window(window, record=False)
  for r in range(rounds):
    for i in range(len(runners)):
      runners[(r + i) % len(runners)].run_window(window)
  dense, static, rigl = runners
  med = bench_common.median
  n_updates = len(rigl.update_ms)
  if n_updates != rounds:
    raise RuntimeError(f'expected one RigL update per window, got {n_updates} in {rounds}')
  return {
      'dense_ms': med(dense.window_ms),
      'static_ms': med(static.window_ms),
      'rigl_ms_median': med(rigl.step_ms),
      'rigl_update_ms': med(rigl.update_ms),
      'rigl_ms_amortized': med(rigl.window_ms),
      # Paired per round, so slow phases of a shared machine cancel.
      'ratio_amortized': med([r / d for r, d in zip(rigl.window_ms, dense.window_ms)]),
      'ratio_static': med([s / d for s, d in zip(static.window_ms, dense.window_ms)]),
      'ratio_rigl_median_step': med(rigl.step_ms) / med(dense.step_ms),
      'dense_step_ms_median': med(dense.step_ms),
      'rounds': rounds, 'window_steps': window,
  }


def main():
  args = parse_args()
  if args.quick:
    args.frequency = 5
  bench_common.limit_tensorflow_threads(args.threads)
  results = {'config': {
      'command': 'python bench/step_overhead.py ' + ' '.join(
          a for a in sys.argv[1:] if not a.startswith('--out')),
      'threads': args.threads, 'jit_compile': args.jit_compile,
      'frequency': args.frequency, 'quick': args.quick,
      'optimizer': 'SGD(0.01, momentum=0.9); sparse: 90% uniform masks',
      'mlp': 'FC 784-300-100-10, batch 100, random inputs',
      'resnet50': ('quick: ResNet-18 at 32x32, batch 2' if args.quick else
                   'ResNet-50 v1, 64x64x3 inputs, batch 16, 1000 classes'),
  }, 'machine': bench_common.machine(), 'models': {}}
  rows = []
  for model_name in args.models.split(','):
    result = measure(model_name, args)
    results['models'][model_name] = result
    rows.append([model_name] + [result[k] for k in (
        'dense_ms', 'static_ms', 'rigl_ms_median', 'rigl_update_ms', 'rigl_ms_amortized',
        'ratio_static', 'ratio_amortized')])
  table = bench_common.markdown_table(
      ['model', 'dense_ms', 'static_ms', 'rigl_ms_median', 'rigl_update_ms',
       'rigl_ms_amortized', 'static / dense', 'ratio_amortized'], rows)
  bench_common.write_results(args.out, results, table)


if __name__ == '__main__':
  main()
