"""Truly sparse layers against masked and dense ones: training-step time and memory.

For each model and sparsity, three versions of the same MLP are trained side by side in
one process:

  dense   plain `keras.layers.Dense` and SGD with momentum 0.9: the cost sparsity is
          supposed to beat;
  masked  `rigl.layers.MaskedDense` (dense kernels times 0/1 masks) and
          `SparseRigLOptimizer`;
  sparse  `rigl.sparse_layers.SparseDense` (only the active weights, CSR products) and
          `SparseRigLOptimizer`.

Every layer has the same (uniform) sparsity; RigL updates every `frequency` steps (drop
fraction 0.3). A step is forward + backward + optimizer, one `tf.function` call, and each
is timed on its own; update steps are told apart from the others. The time per step
amortized over ΔT = 100 steps is `(99 * median step + median update step) / 100`, so
short windows suffice (one update per window). Variants take turns in rounds (rotating
order) after a warm-up that traces both kinds of step; medians over rounds.

Memory is what stays allocated between steps, counted from the variables themselves:
weights, masks or indices, optimizer slots, and the sparse layers' grow candidates.
Update steps also build dense temporaries of each layer's full size.

  python bench/sparse_execution.py --out=bench/results/sparse_execution.json
"""

import bench_common  # pylint: disable=unused-import,g-bad-import-order

import time

import numpy as np

MODELS = {
    # name: (layer sizes, batch)
    'mnist_mlp': ((784, 300, 100, 10), 100),
    'wide_mlp': ((4096, 4096, 4096, 1000), 128),
}
QUICK_MODELS = {'mnist_mlp': ((784, 300, 100, 10), 100), 'wide_mlp': ((512, 512, 128), 32)}
SPARSITIES = (0.8, 0.9, 0.95, 0.98, 0.99)
VARIANTS = ('dense', 'masked', 'sparse')
AMORTIZE_OVER = 100


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--models', default='mnist_mlp,wide_mlp')
  parser.add_argument('--sparsities', default=','.join(map(str, SPARSITIES)))
  parser.add_argument('--rounds', type=int, default=0,
                      help='rounds per model and sparsity (0: 15 for mnist_mlp, 3 for '
                      'wide_mlp)')
  parser.add_argument('--frequency', type=int, default=10,
                      help='steps per window, with one RigL update in each')
  return parser.parse_args()


def build(variant, sizes, sparsity, frequency):
  """(model, optimizer) of one variant; masks drawn with seed 0 (the same in all)."""
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  from rigl import sparse_layers  # pylint: disable=g-import-not-at-top
  from rigl import sparse_optimizers as so  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  layer_class = keras.layers.Dense if variant == 'dense' else layers.MaskedDense
  model = keras.Sequential(
      [keras.Input((sizes[0],))] +
      [layer_class(n, activation='relu' if i < len(sizes) - 2 else None, name=f'layer{i}')
       for i, n in enumerate(sizes[1:])])
  inner = keras.optimizers.SGD(0.01, momentum=0.9)
  if variant == 'dense':
    return model, inner

  def rigl():
    return so.SparseRigLOptimizer(
        keras.optimizers.SGD(0.01, momentum=0.9), begin_step=0, end_step=10**9,
        frequency=frequency, drop_fraction=0.3, default_sparsity=sparsity,
        mask_init_method='random')

  if variant == 'masked':
    return model, rigl()
  # The masks a masked run would start from, then the same weights as sparse layers.
  rigl().build(model.trainable_variables)
  return sparse_layers.to_sparse_execution(model), rigl()


def state_bytes(model, optimizer):
  """Bytes of the variables a training run keeps between steps."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import sparse_layers  # pylint: disable=g-import-not-at-top
  variables = {id(v): v for v in list(model.weights) + list(optimizer.variables)}
  for layer in sparse_layers.sparse_layers(model):
    candidates = layer._grow_candidates  # pylint: disable=protected-access
    variables.update({id(v): v for v in (candidates.positions, candidates.gradients)})
  return int(sum(np.prod(v.shape) * tf.as_dtype(v.dtype).size for v in variables.values()))


class Runner:
  """One variant at one sparsity: times every step, apart by kind."""

  def __init__(self, variant, sizes, batch, sparsity, frequency):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.variant = variant
    self.model, self.optimizer = build(variant, sizes, sparsity, frequency)
    self.step = bench_common.train_step(self.model, self.optimizer)
    rng = np.random.RandomState(1)
    self.x = tf.constant(rng.uniform(size=(batch, sizes[0])).astype(np.float32))
    self.y = tf.constant(rng.randint(0, sizes[-1], size=batch).astype(np.int32))
    self.step_ms, self.update_ms = [], []

  def _last_update(self):
    last = getattr(self.optimizer, 'last_mask_update_step', None)
    return None if last is None else int(last)

  def run(self, steps, record=True):
    for _ in range(steps):
      before = self._last_update()
      start = time.perf_counter()
      self.step(self.x, self.y).numpy()
      ms = 1e3 * (time.perf_counter() - start)
      if record:
        updated = self.variant != 'dense' and self._last_update() != before
        (self.update_ms if updated else self.step_ms).append(ms)

  def amortized_ms(self):
    step = bench_common.median(self.step_ms)
    if self.variant == 'dense':
      return step
    update = bench_common.median(self.update_ms)
    return ((AMORTIZE_OVER - 1) * step + update) / AMORTIZE_OVER


def measure(model_name, sizes, batch, sparsity, rounds, frequency):
  runners = [Runner(v, sizes, batch, sparsity, frequency) for v in VARIANTS]
  for runner in runners:
    runner.run(frequency + 1, record=False)  # traces the update and the plain step
  for r in range(rounds):
    for i in range(len(runners)):
      runners[(r + i) % len(runners)].run(frequency)
  dense, masked, sparse = runners
  masked_layer_nnz = [int(np.asarray(l.mask).sum()) for l in masked.model.layers]
  sparse_layer_nnz = [l.nnz for l in sparse.model.layers]
  if masked_layer_nnz != sparse_layer_nnz:
    raise RuntimeError(f'active weights differ: {masked_layer_nnz} vs {sparse_layer_nnz}')
  med = bench_common.median
  row = {
      'model': model_name, 'sparsity': sparsity, 'layer_sizes': list(sizes),
      'batch': batch, 'active_weights': int(sum(sparse_layer_nnz)),
      'dense_ms': dense.amortized_ms(), 'masked_ms': masked.amortized_ms(),
      'sparse_ms': sparse.amortized_ms(),
      'masked_step_ms': med(masked.step_ms), 'masked_update_ms': med(masked.update_ms),
      'sparse_step_ms': med(sparse.step_ms), 'sparse_update_ms': med(sparse.update_ms),
      'dense_state_bytes': state_bytes(dense.model, dense.optimizer),
      'masked_state_bytes': state_bytes(masked.model, masked.optimizer),
      'sparse_state_bytes': state_bytes(sparse.model, sparse.optimizer),
      'rounds': rounds,
  }
  row['speedup_sparse_vs_dense'] = row['dense_ms'] / row['sparse_ms']
  return row


def main():
  args = parse_args()
  bench_common.limit_tensorflow_threads(args.threads)
  models = QUICK_MODELS if args.quick else MODELS
  sparsities = (0.9,) if args.quick else tuple(float(s) for s in args.sparsities.split(','))
  frequency = 3 if args.quick else args.frequency
  results = {'config': {
      'command': bench_common.command_line(),
      'threads': args.threads, 'quick': args.quick, 'window_steps': frequency,
      'amortized_over': AMORTIZE_OVER,
      'optimizer': 'SGD(0.01, momentum=0.9); masked and sparse: SparseRigLOptimizer, '
                   'uniform sparsity on every layer, drop fraction 0.3',
  }, 'machine': bench_common.machine(), 'rows': []}
  table_rows = []
  for model_name in args.models.split(','):
    sizes, batch = models[model_name]
    rounds = 2 if args.quick else (
        args.rounds or (15 if model_name == 'mnist_mlp' else 3))
    for sparsity in sparsities:
      row = measure(model_name, sizes, batch, sparsity, rounds, frequency)
      results['rows'].append(row)
      mib = lambda b: b / 2**20
      table_rows.append([model_name, sparsity, row['dense_ms'], row['masked_ms'],
                         row['sparse_ms'], row['speedup_sparse_vs_dense'],
                         mib(row['dense_state_bytes']), mib(row['masked_state_bytes']),
                         mib(row['sparse_state_bytes'])])
      print(f'{model_name} {sparsity}: dense {row["dense_ms"]:.3g} ms, masked '
            f'{row["masked_ms"]:.3g} ms, sparse {row["sparse_ms"]:.3g} ms', flush=True)
  table = bench_common.markdown_table(
      ['model', 'sparsity', 'dense_ms', 'masked_ms', 'sparse_ms', 'dense / sparse',
       'dense MiB', 'masked MiB', 'sparse MiB'], table_rows)
  bench_common.write_results(args.out, results, table)


if __name__ == '__main__':
  main()
