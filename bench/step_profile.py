"""Where a masked training step's extra time goes, on the MNIST MLP.

`step_overhead.py` compares whole steps; this takes the masked RigL step apart by adding
one ingredient at a time, all side by side in one process (rotating order, paired
ratios against `dense`, medians over rounds; one `tf.function` call per step):

  dense          Dense layers, SGD with momentum 0.9;
  dense_again    the same again: the noise floor of the machine;
  masked_layers  MaskedDense layers (forward `kernel * mask`), the plain SGD;
  static         + SparseStaticOptimizer with no update possible (the wrapper alone);
  set_never_due  + SparseSETOptimizer whose updates are never due, testing for one in
                 every step (a `tf.cond` around the update), as in `model.fit`;
  rigl_never_due + SparseRigLOptimizer, the same (its `tf.cond` holds the weight
                 update too);
  set_untested, rigl_untested
                 the same two in steps traced without the test, as `rigl.train_lib`
                 runs the steps where no update can be due (`rigl.mask_update_dispatch`).

Then one RigL mask update of the MLP, and its parts on `layer1` (784x300, 90% sparse):
the drop-score noise, one top-k selection (`rigl.selection.top_mask`), and the rest; and
the three `kernel * mask` products alone, beyond reading the kernels: the least any
masked step adds (its ratio is 1 + that time over the dense step).

With `--jit_compile` every step, the update and the products are compiled with XLA.

  python bench/step_profile.py --rounds=150 --out=bench/results/step_profile.json
  python bench/step_profile.py --rounds=150 --jit_compile \
      --out=bench/results/step_profile_jit.json
"""

import bench_common  # pylint: disable=g-bad-import-order

import time

import numpy as np

VARIANTS = ('dense', 'dense_again', 'masked_layers', 'static', 'set_never_due',
            'rigl_never_due', 'set_untested', 'rigl_untested')


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--rounds', type=int, default=40)
  parser.add_argument('--window', type=int, default=50, help='steps per window')
  parser.add_argument('--repeats', type=int, default=30,
                      help='timed repetitions of each update part')
  parser.add_argument('--jit_compile', action='store_true',
                      help='compile the steps, the update and the products with XLA')
  return parser.parse_args()


def build(variant):
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import sparse_optimizers as so  # pylint: disable=g-import-not-at-top
  from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = mnist_model.build_model(masked=not variant.startswith('dense'))
  inner = keras.optimizers.SGD(0.01, momentum=0.9)
  masks = dict(default_sparsity=0.9, mask_init_method='random')
  never = dict(begin_step=10**9, end_step=2 * 10**9, frequency=100, drop_fraction=0.3)
  optimizer = {
      'static': lambda: so.SparseStaticOptimizer(inner, begin_step=0, end_step=0,
                                                 frequency=1, drop_fraction=0.0, **masks),
      'set': lambda: so.SparseSETOptimizer(inner, **never, **masks),
      'rigl': lambda: so.SparseRigLOptimizer(inner, **never, **masks),
  }.get(variant.split('_')[0], lambda: inner)()
  return model, optimizer


def train_step(variant, jit_compile):
  return bench_common.train_step(*build(variant), jit_compile=jit_compile,
                                 skip_update_test=not variant.endswith('_never_due'))


def time_ms(fn, repeats):
  """Median wall time of `fn()` (which must wait for its result), after one warm-up."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - start))
  return bench_common.median(times)


def step_breakdown(args):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  x = tf.constant(rng.uniform(size=(100, 784)).astype(np.float32))
  y = tf.constant(rng.randint(0, 10, size=100).astype(np.int32))
  steps = {v: train_step(v, args.jit_compile) for v in VARIANTS}
  window_ms = {v: [] for v in VARIANTS}

  def window(variant):
    start = time.perf_counter()
    for _ in range(args.window):
      steps[variant](x, y).numpy()
    return 1e3 * (time.perf_counter() - start) / args.window

  for variant in VARIANTS:
    window(variant)
  order = list(VARIANTS)
  for r in range(args.rounds):
    for i in range(len(order)):
      variant = order[(r + i) % len(order)]
      window_ms[variant].append(window(variant))
  med = bench_common.median
  return {v: {'ms': med(window_ms[v]),
              'ratio': med([a / d for a, d in zip(window_ms[v], window_ms['dense'])])}
          for v in VARIANTS}


def update_breakdown(args):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import selection  # pylint: disable=g-import-not-at-top
  from rigl import sparse_optimizers as so  # pylint: disable=g-import-not-at-top
  from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = mnist_model.build_model(masked=True)
  # Frequency 1 from step 0: every apply() is a mask update (RigL's does not advance
  # the step, so the schedule stays due).
  optimizer = so.SparseRigLOptimizer(
      keras.optimizers.SGD(0.01, momentum=0.9), begin_step=0, end_step=10**9, frequency=1,
      drop_fraction=0.3, default_sparsity=0.9, mask_init_method='random')
  variables = model.trainable_variables
  grads = [tf.random.stateless_normal(v.shape, [0, i]) for i, v in enumerate(variables)]

  @tf.function(jit_compile=args.jit_compile)
  def update():
    optimizer.apply(grads, variables)
    return optimizer.changed_connections

  kernel = model.get_layer('layer1').kernel_variable
  seed = tf.constant([1, 2], tf.int64)
  flat_size = int(np.prod(kernel.shape))
  keep = int(0.07 * flat_size)

  @tf.function(jit_compile=args.jit_compile)
  def noise():
    return tf.random.stateless_normal(kernel.shape, seed, stddev=1e-5, alg='philox')

  @tf.function(jit_compile=args.jit_compile)
  def select():
    return selection.top_mask(tf.reshape(tf.abs(kernel), [-1]), keep)

  whole = time_ms(lambda: update().numpy(), args.repeats)
  noise_ms = time_ms(lambda: noise().numpy(), args.repeats)
  select_ms = time_ms(lambda: select().numpy(), args.repeats)
  # Timed alone; inside the update they overlap with other work on the 2 threads.
  return {'update_ms': whole, 'layer1_noise_ms': noise_ms, 'layer1_top_mask_ms': select_ms}


def mask_product_ms(args):
  """Time of the MLP's three `kernel * mask` products beyond reading the kernels: what
  the masked forward pass adds at the least (paired calls, median difference)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
  pairs = layers.get_mask_kernel_pairs(mnist_model.build_model(masked=True))
  products = tf.function(lambda: [k * m for m, k in pairs], jit_compile=args.jit_compile)
  reads = tf.function(lambda: [tf.identity(k) for _, k in pairs],
                      jit_compile=args.jit_compile)
  products(), reads()
  differences = []
  for _ in range(args.repeats * 50):
    _, with_products = bench_common.timed(products)
    _, only_reads = bench_common.timed(reads)
    differences.append(1e3 * (with_products - only_reads))
  return bench_common.median(differences)


def main():
  args = parse_args()
  if args.quick:
    args.rounds, args.window, args.repeats = 2, 3, 2
  bench_common.limit_tensorflow_threads(args.threads)
  steps = step_breakdown(args)
  updates = update_breakdown(args)
  products_ms = mask_product_ms(args)
  results = {'config': {
      'command': bench_common.command_line(),
      'threads': args.threads, 'rounds': args.rounds, 'window': args.window,
      'quick': args.quick, 'jit_compile': args.jit_compile,
      'model': 'FC 784-300-100-10, batch 100, L2 1e-4, SGD momentum 0.9, 90% masks',
  }, 'machine': bench_common.machine(), 'steps': steps, 'update': updates,
                 'mask_products_ms': products_ms}
  rows = [[v, steps[v]['ms'], steps[v]['ratio']] for v in VARIANTS]
  rows += [['mask products alone (3 kernels)', products_ms,
            1 + products_ms / steps['dense']['ms']]]
  rows += [['rigl update (whole MLP)', updates['update_ms'], '-'],
           ['  layer1 drop-score noise', updates['layer1_noise_ms'], '-'],
           ['  layer1 one top_mask', updates['layer1_top_mask_ms'], '-']]
  table = bench_common.markdown_table(['what', 'ms', 'ratio vs dense'], rows)
  bench_common.write_results(args.out, results, table)


if __name__ == '__main__':
  main()
