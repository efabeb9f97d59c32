"""MultiWorkerMirroredStrategy over loopback: two worker processes agree on every mask."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_two_workers_on_different_data_keep_identical_masks(tmp_path):
  cluster = {'worker': [f'localhost:{port}' for port in _free_ports(2)]}
  workers = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', WORKER_INDEX=str(index),
               PYTHONPATH=_ROOT,
               TF_CONFIG=json.dumps({'cluster': cluster,
                                     'task': {'type': 'worker', 'index': index}}))
    workers.append(subprocess.Popen(
        [sys.executable, os.path.join(_ROOT, 'tests', 'multi_worker_script.py'),
         str(tmp_path / f'worker{index}.npy')],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  for worker in workers:
    output, _ = worker.communicate(timeout=240)
    assert worker.returncode == 0, output[-3000:]
  first, second = (np.load(tmp_path / f'worker{i}.npy') for i in range(2))
  np.testing.assert_array_equal(first, second)
  changed, steps = first[-2:]
  assert changed > 0  # the last update moved connections
  # Each worker's 8 batches of 32 are split into 16 per-replica batches of 16; RigL's 4
  # update steps (at counts 0, 3, 6, 9) do not advance the counter.
  assert steps == 16 - 4
