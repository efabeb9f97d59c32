"""Scaling of mask updates: one RigL drop-and-grow against layer size, and a ResNet-50.

Part 1 times one RigL mask update (`SparseRigLOptimizer.apply` on a step where the mask
update replaces the weight step) of a single 90%-sparse masked layer from 10^4 to 3*10^7
weights, with a fixed gradient; it reports the time per weight and the exponent b of a
least-squares fit time ~ size^b (on a log-log scale).

Part 2 builds a masked ResNet-50 (64x64 inputs, batch 16, 80% uniform sparsity, first
layer dense) with RigL and compares the update of all its layers at once (`apply` on an
update step, gradients given) with 100 ordinary training steps (forward, backward and
weight update), the two timed alternately in one process.

  python bench/mask_update_scaling.py --out=bench/results/mask_update_scaling.json
"""

import bench_common  # pylint: disable=g-bad-import-order

import time

import numpy as np

SIZES = (10**4, 3 * 10**4, 10**5, 3 * 10**5, 10**6, 3 * 10**6, 10**7, 3 * 10**7)


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--sizes', default=','.join(str(s) for s in SIZES),
                      help='comma-separated layer sizes (numbers of weights)')
  parser.add_argument('--repeats', type=int, default=5,
                      help='timed updates per layer size (after one warm-up update)')
  parser.add_argument('--resnet_rounds', type=int, default=5,
                      help='alternations of one whole-model update and training steps')
  args = parser.parse_args()
  if args.quick:
    args.sizes, args.repeats, args.resnet_rounds = '10000,30000', 2, 2
  return args


def rigl_optimizer(sparsity, frequency):
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import sparse_optimizers as so  # pylint: disable=g-import-not-at-top
  # An update does not advance the step counter: after it come `frequency` ordinary
  # steps, then the next update.
  return so.SparseRigLOptimizer(
      keras.optimizers.SGD(0.01, momentum=0.9), begin_step=0, end_step=10**9, frequency=frequency,
      drop_fraction=0.3, drop_fraction_anneal='cosine', default_sparsity=sparsity,
      mask_init_method='random')


class Alternator:
  """Times `update_fn` on mask-update steps and `other_fn` on every other step."""

  def __init__(self, optimizer, update_fn, other_fn):
    self.optimizer, self.update_fn, self.other_fn = optimizer, update_fn, other_fn
    self.update_ms, self.other_ms = [], []

  def run(self, updates, record=True):
    done = 0
    while done < updates:
      due = bool(self.optimizer.is_mask_update_iter(self.optimizer.iterations))
      fn, times = (self.update_fn, self.update_ms) if due else (
          self.other_fn, self.other_ms)
      start = time.perf_counter()
      fn()
      if record:
        times.append(1e3 * (time.perf_counter() - start))
      done += due


def single_layer(size, repeats):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  layer = layers.MaskedDense(100, use_bias=False)
  layer.build((None, size // 100))
  optimizer = rigl_optimizer(0.9, frequency=1)
  kernel = layer.kernel_variable
  optimizer.build([kernel])
  grad = tf.random.stateless_normal(kernel.shape, [1, 2])

  @tf.function
  def apply():
    optimizer.apply([grad], [kernel])

  def run():
    apply()
    # A variable read blocks until the update has run.
    float(optimizer.changed_connections)

  alternator = Alternator(optimizer, run, run)
  alternator.run(1, record=False)
  alternator.run(repeats)
  update_ms = bench_common.median(alternator.update_ms)
  return {'size': int(np.prod(kernel.shape)), 'update_ms': update_ms,
          'ns_per_weight': 1e6 * update_ms / int(np.prod(kernel.shape)),
          'plain_step_ms': bench_common.median(alternator.other_ms)}


def whole_resnet50(rounds, quick):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  from rigl.imagenet_resnet import resnet_model  # pylint: disable=g-import-not-at-top
  depth, size, batch = (18, 32, 2) if quick else (50, 64, 16)
  keras.utils.set_random_seed(0)
  model = resnet_model.resnet_v1_(
      depth, 1000, pruning_method='threshold', prune_first_layer=False,
      weight_decay=1e-4, input_shape=(size, size, 3))
  optimizer = rigl_optimizer(0.8, frequency=2 if quick else 10)
  optimizer.build(model.trainable_variables)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  rng = np.random.RandomState(0)
  x = tf.constant(rng.uniform(size=(batch, size, size, 3)).astype(np.float32))
  y = tf.constant(rng.randint(0, 1000, size=batch).astype(np.int32))

  def gradients():
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True)) + tf.add_n(model.losses)
    return loss, tape.gradient(loss, model.trainable_variables)

  @tf.function
  def train_step():
    loss, grads = gradients()
    optimizer.apply(grads, model.trainable_variables)
    return loss

  @tf.function
  def apply(grads):
    optimizer.apply(grads, model.trainable_variables)

  fixed_grads = tf.function(gradients)()[1]

  def update():
    apply(fixed_grads)
    float(optimizer.changed_connections)

  alternator = Alternator(optimizer, update, lambda: train_step().numpy())
  alternator.run(1, record=False)
  alternator.run(rounds)
  update_ms = bench_common.median(alternator.update_ms)
  step_ms = bench_common.median(alternator.other_ms)
  masked = layers.get_masks(model)
  return {
      'model': f'ResNet-{depth}, {size}x{size}x3, batch {batch}',
      'masked_layers': len(masked),
      'masked_weights': int(sum(np.prod(m.shape) for m in masked)),
      'update_all_layers_ms': update_ms, 'train_step_ms': step_ms,
      'update_fraction_of_100_steps': update_ms / (100 * step_ms),
      'updates_timed': len(alternator.update_ms), 'steps_timed': len(alternator.other_ms),
  }


def main():
  args = parse_args()
  bench_common.limit_tensorflow_threads(args.threads)
  layers_result = [single_layer(int(s), args.repeats) for s in args.sizes.split(',')]
  sizes = np.array([r['size'] for r in layers_result], float)
  times = np.array([r['update_ms'] for r in layers_result])
  exponent = float(np.polyfit(np.log(sizes), np.log(times), 1)[0])
  large = sizes >= 10**6
  exponent_large = (float(np.polyfit(np.log(sizes[large]), np.log(times[large]), 1)[0])
                    if large.sum() >= 2 else None)
  resnet = whole_resnet50(args.resnet_rounds, args.quick)
  results = {
      'config': {'command': bench_common.command_line(),
                 'threads': args.threads, 'quick': args.quick,
                 'layer': 'MaskedDense [size/100, 100], 90% uniform, RigL drop 0.3'},
      'machine': bench_common.machine(),
      'single_layer': layers_result, 'fitted_exponent': exponent,
      'fitted_exponent_from_1e6': exponent_large, 'resnet50': resnet,
  }
  table = bench_common.markdown_table(
      ['weights', 'update_ms', 'ns / weight'],
      [[f'{r["size"]:.0e}'.replace('e+0', 'e'), r['update_ms'], r['ns_per_weight']]
       for r in layers_result])
  table += f'\n\nfitted exponent (time ~ size^b): b = {exponent:.2f} over all sizes'
  if exponent_large is not None:
    table += f', {exponent_large:.2f} from 10^6 weights on'
  table += '\n\n' + bench_common.markdown_table(
      ['model', 'masked weights', 'update of all layers (ms)', 'train step (ms)',
       'update / 100 steps'],
      [[resnet['model'], resnet['masked_weights'], resnet['update_all_layers_ms'],
        resnet['train_step_ms'], f'{100 * resnet["update_fraction_of_100_steps"]:.2f}%']])
  bench_common.write_results(args.out, results, table)


if __name__ == '__main__':
  main()
