"""Where a masked training step's extra time goes, on the MNIST MLP.

`step_overhead.py` compares whole steps; this takes the masked RigL step apart by adding
one ingredient at a time, all side by side in one process (rotating order, paired
ratios against `dense`, medians over rounds; one `tf.function` call per step):

  dense          Dense layers, SGD with momentum 0.9;
  dense_again    the same again: the noise floor of the machine;
  masked_layers  MaskedDense layers (forward `kernel * mask`), the plain SGD;
  static         + SparseStaticOptimizer with no update possible (the wrapper alone);
  set_never_due  + SparseSETOptimizer whose updates are never due (schedule test and
                 `tf.cond` around the update, every step);
  rigl_never_due + SparseRigLOptimizer whose updates are never due (its `tf.cond`
                 holds the weight update too).

Then one RigL mask update of the MLP, and its parts on `layer1` (784x300, 90% sparse):
the drop-score noise, one top-k selection (`rigl.selection.top_mask`), and the rest.

  python bench/step_profile.py --out=bench/results/step_profile.json
"""

import bench_common  # pylint: disable=g-bad-import-order

import time

import numpy as np

VARIANTS = ('dense', 'dense_again', 'masked_layers', 'static', 'set_never_due',
            'rigl_never_due')


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--rounds', type=int, default=40)
  parser.add_argument('--window', type=int, default=50, help='steps per window')
  parser.add_argument('--repeats', type=int, default=30,
                      help='timed repetitions of each update part')
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
      'set_never_due': lambda: so.SparseSETOptimizer(inner, **never, **masks),
      'rigl_never_due': lambda: so.SparseRigLOptimizer(inner, **never, **masks),
  }.get(variant, lambda: inner)()
  return model, optimizer


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
  steps = {v: bench_common.train_step(*build(v)) for v in VARIANTS}
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

  @tf.function
  def update():
    optimizer.apply(grads, variables)
    return optimizer.changed_connections

  kernel = model.get_layer('layer1').kernel_variable
  seed = tf.constant([1, 2], tf.int64)
  flat_size = int(np.prod(kernel.shape))
  keep = int(0.07 * flat_size)

  @tf.function
  def noise():
    return tf.random.stateless_normal(kernel.shape, seed, stddev=1e-5)

  @tf.function
  def select():
    return selection.top_mask(tf.reshape(tf.abs(kernel), [-1]), keep)

  whole = time_ms(lambda: update().numpy(), args.repeats)
  noise_ms = time_ms(lambda: noise().numpy(), args.repeats)
  select_ms = time_ms(lambda: select().numpy(), args.repeats)
  # Timed alone; inside the update they overlap with other work on the 2 threads.
  return {'update_ms': whole, 'layer1_noise_ms': noise_ms, 'layer1_top_mask_ms': select_ms}


def main():
  args = parse_args()
  if args.quick:
    args.rounds, args.window, args.repeats = 2, 3, 2
  bench_common.limit_tensorflow_threads(args.threads)
  steps = step_breakdown(args)
  updates = update_breakdown(args)
  results = {'config': {
      'command': bench_common.command_line(),
      'threads': args.threads, 'rounds': args.rounds, 'window': args.window,
      'quick': args.quick,
      'model': 'FC 784-300-100-10, batch 100, L2 1e-4, SGD momentum 0.9, 90% masks',
  }, 'machine': bench_common.machine(), 'steps': steps, 'update': updates}
  rows = [[v, steps[v]['ms'], steps[v]['ratio']] for v in VARIANTS]
  rows += [['rigl update (whole MLP)', updates['update_ms'], '-'],
           ['  layer1 drop-score noise', updates['layer1_noise_ms'], '-'],
           ['  layer1 one top_mask', updates['layer1_top_mask_ms'], '-']]
  table = bench_common.markdown_table(['what', 'ms', 'ratio vs dense'], rows)
  bench_common.write_results(args.out, results, table)


if __name__ == '__main__':
  main()
