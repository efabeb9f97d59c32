"""Shared pieces of the benchmarks: quiet TensorFlow, thread limits, JSON and tables.

Every benchmark is a script (`python bench/NAME.py --out=...`); this module sits beside
them, so `import bench_common` works when a script is run from anywhere.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)


def parser(description):
  """The flags every benchmark shares: --out, --quick and --threads."""
  result = argparse.ArgumentParser(description=description)
  result.add_argument('--out', help='path of the JSON file to write')
  result.add_argument('--quick', action='store_true',
                      help='tiny sizes, only to check that the benchmark runs')
  result.add_argument('--threads', type=int, default=2,
                      help='intra- and inter-op threads of TensorFlow (and torch)')
  return result


def command_line(output_flags=('--out',)):
  """How this benchmark was run, without the flags that name its output files."""
  return f'python bench/{os.path.basename(sys.argv[0])} ' + ' '.join(
      a for a in sys.argv[1:] if not a.startswith(tuple(output_flags)))


def limit_tensorflow_threads(threads):
  """Must run before TensorFlow executes its first op."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)


def run_jobs(function, jobs, workers, threads):
  """`[function(job) for job in jobs]`, each result printed as a JSON line when it is
  done; with `workers` > 1 in spawned processes (each imports TensorFlow afresh and
  limits its own threads to `threads`)."""
  if workers <= 1:
    limit_tensorflow_threads(threads)
    results = []
    for job in jobs:
      results.append(function(job))
      print(json.dumps(results[-1]), flush=True)
    return results
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top
  results = []
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn'),
      initializer=limit_tensorflow_threads, initargs=(threads,)) as pool:
    for result in pool.map(function, jobs):
      results.append(result)
      print(json.dumps(result), flush=True)
  return results


def machine():
  """A description of where the numbers were measured."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  return {'cpu': cpu, 'cpu_count': os.cpu_count(), 'python': platform.python_version(),
          'tensorflow': tf.__version__, 'keras': keras.__version__,
          'platform': platform.platform()}


def train_step(model, optimizer, jit_compile=False, skip_update_test=True):
  """One compiled training step of a classifier on (inputs, integer labels): forward,
  softmax cross-entropy plus the model's regularization losses, backward and
  `optimizer.apply`; returns the loss.

  Steps where no mask update can be due run without the update test, as in
  `rigl.train_lib` (`rigl.mask_update_dispatch`); `skip_update_test=False` keeps the
  test in every step, as in `model.fit`.
  """
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from rigl import mask_update_dispatch  # pylint: disable=g-import-not-at-top
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def make_function():
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

  dispatch = mask_update_dispatch.MaskUpdateDispatch(optimizer, make_function,
                                                     skip_update_test)

  def one_step(x, y):
    step, _ = dispatch.next_call(1)
    return step(x, y)

  return one_step


def median(values):
  return float(statistics.median(values))


def timed(fn):
  """(result, seconds) of `fn()`; `fn` must block until its work is done."""
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def markdown_table(header, rows):
  """A GitHub markdown table; floats are printed with 3 significant decimals."""
  def cell(value):
    if isinstance(value, float):
      return f'{value:.3g}' if abs(value) < 1000 else f'{value:.0f}'
    return str(value)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def write_results(path, results, table):
  """Prints the table and writes the JSON (and the table beside it, as .md)."""
  print(table)
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=2, sort_keys=True)
    f.write('\n')
  with open(os.path.splitext(path)[0] + '.md', 'w', encoding='utf-8') as f:
    f.write(table + '\n')
