"""One worker of tests/test_multi_worker.py: trains with RigL, saves masks and a kernel.

Run with TF_CONFIG set; argv[1] is the output .npy path. Each worker reads different data,
so the workers agree only if the mask updates use the all-reduced gradient.
"""

import os
import sys

import keras
import numpy as np
import tensorflow as tf

from rigl import layers
from rigl import sparse_optimizers


def main(output_path):
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  with strategy.scope():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((20,)),
        layers.MaskedDense(32, activation='relu', name='layer1'),
        layers.MaskedDense(4, name='layer2')])
    optimizer = sparse_optimizers.SparseRigLOptimizer(
        keras.optimizers.SGD(0.05, momentum=0.9), frequency=3, drop_fraction=0.3,
        default_sparsity=0.8)
    optimizer.build(model.trainable_variables)
  rng = np.random.RandomState(int(os.environ['WORKER_INDEX']))
  x = rng.randn(256, 20).astype('float32')
  y = rng.randint(0, 4, 256)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).with_options(options)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction='sum')
  variables = model.trainable_variables

  def replica_step(xb, yb):
    with tf.GradientTape() as tape:
      loss = loss_fn(yb, model(xb)) / 64.0
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  @tf.function
  def step(xb, yb):
    strategy.run(replica_step, args=(xb, yb))

  for xb, yb in strategy.experimental_distribute_dataset(dataset):
    step(xb, yb)
  np.save(output_path, np.concatenate(
      [m.numpy().ravel() for m in optimizer.masks] + [optimizer.kernels[0].numpy().ravel(),
       [float(optimizer.changed_connections.numpy()), float(optimizer.iterations.numpy())]]))


if __name__ == '__main__':
  main(sys.argv[1])
