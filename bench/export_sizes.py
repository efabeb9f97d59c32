"""What deploying a sparse model saves: file sizes and TFLite latency, dense against sparse.

For each model (masks drawn as the training scripts draw them; trained values would give
the same sizes, which depend only on which weights are zero), `rigl.export.size_report`
gives the bytes of every format, and LiteRT runs the dense and the sparse TFLite files on
one example at a time (median over `--repeats` invocations, after a warm-up, the two
alternating):

  mnist_90      the MNIST network at the MNIST script's 90% (layer2 81%, layer3 dense);
  mnist_98      the same at 98% (layer2 88.2%);
  mobilenet_v1  MobileNet-v1 (224x224, 1000 classes) with ERK at 90%, as the released
                checkpoints (first layer dense).

  python bench/export_sizes.py --out=bench/results/export_sizes.json
"""

import bench_common  # pylint: disable=g-bad-import-order

import time

import numpy as np


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--models', default='mnist_90,mnist_98,mobilenet_v1')
  parser.add_argument('--repeats', type=int, default=200)
  return parser.parse_args()


def build(name, quick):
  """(model, example inputs) with masks drawn by the scripts' rules."""
  import keras  # pylint: disable=g-import-not-at-top
  from rigl import layers  # pylint: disable=g-import-not-at-top
  from rigl import sparse_utils  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  if name.startswith('mnist'):
    from rigl.mnist import mnist_model  # pylint: disable=g-import-not-at-top
    sparsity = int(name.split('_')[1]) / 100
    model = mnist_model.build_model(masked=True)
    sparse_utils.get_mask_init_fn(
        layers.get_masks(model), 'random', sparsity,
        {'layer2': sparsity * 0.9, 'layer3': 0.0},
        mask_fn=sparse_utils.seeded_mask_random(0),
        extract_name_fn=sparse_utils.layer_name_of_mask)()
    inputs = np.random.RandomState(0).uniform(size=(1, 784)).astype(np.float32)
    return model, inputs
  from rigl.imagenet_resnet import imagenet_model  # pylint: disable=g-import-not-at-top
  size, width = (32, 0.25) if quick else (224, 1.0)
  model = imagenet_model.build_model('mobilenet_v1', width=width, image_size=size)
  sparse_utils.get_mask_init_fn(
      layers.get_masks(model), 'erdos_renyi_kernel', 0.9,
      imagenet_model.custom_sparsity_map('mobilenet_v1', 0., -1.),
      mask_fn=sparse_utils.seeded_mask_random(0),
      extract_name_fn=sparse_utils.layer_name_of_mask)()
  inputs = np.random.RandomState(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
  return model, inputs


def latencies_ms(flatbuffers, inputs, repeats):
  """Median ms of one invocation of each flatbuffer, measured alternately."""
  from rigl import export  # pylint: disable=g-import-not-at-top
  interpreters = []
  for flatbuffer in flatbuffers:
    interpreter = export.tflite_interpreter(flatbuffer)
    source, = interpreter.get_input_details()
    interpreter.set_tensor(source['index'], inputs)
    interpreter.invoke()
    interpreters.append(interpreter)
  times = [[] for _ in flatbuffers]
  for _ in range(repeats):
    for interpreter, recorded in zip(interpreters, times):
      start = time.perf_counter()
      interpreter.invoke()
      recorded.append(1e3 * (time.perf_counter() - start))
  return [bench_common.median(t) for t in times]


def main():
  args = parse_args()
  if args.quick:
    args.repeats = 3
  bench_common.limit_tensorflow_threads(args.threads)
  from rigl import export  # pylint: disable=g-import-not-at-top
  results = {'config': {
      'command': bench_common.command_line(),
      'threads': args.threads, 'repeats': args.repeats, 'quick': args.quick,
      'mobilenet_v1': 'quick: width 0.25 at 32x32' if args.quick else '224x224, width 1',
  }, 'machine': bench_common.machine(), 'models': {}}
  table_rows = []
  for name in args.models.split(','):
    model, inputs = build(name, args.quick)
    rows = export.size_report(model, quantize='dynamic')
    sizes = {label: {'bytes': size, 'gzip_bytes': gz} for label, size, gz in rows}
    dense_ms, sparse_ms = latencies_ms(
        [export.to_tflite(model, sparse=False), export.to_tflite(model, sparse=True)],
        inputs, args.repeats)
    results['models'][name] = {'sizes': sizes, 'tflite_dense_ms': dense_ms,
                               'tflite_sparse_ms': sparse_ms}
    kib = lambda label: sizes[label]['bytes'] / 1024
    table_rows.append([name, kib('parameters, dense float32'), kib('TFLite dense'),
                       kib('TFLite sparse'), kib('TFLite sparse dynamic'), dense_ms,
                       sparse_ms])
  table = bench_common.markdown_table(
      ['model', 'float32 params KiB', 'TFLite dense KiB', 'TFLite sparse KiB',
       'TFLite sparse int8 KiB', 'dense ms', 'sparse ms'], table_rows)
  bench_common.write_results(args.out, results, table)


if __name__ == '__main__':
  main()
