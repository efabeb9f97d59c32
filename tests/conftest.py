"""Test-wide setup: two logical CPU devices, so MirroredStrategy can run on one CPU."""

import os
import subprocess

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import tensorflow as tf  # pylint: disable=g-import-not-at-top

_CPUS = tf.config.list_physical_devices('CPU')
tf.config.set_logical_device_configuration(
    _CPUS[0], [tf.config.LogicalDeviceConfiguration()] * 2)


@pytest.fixture
def mirrored_strategy():
  """A MirroredStrategy over the two logical CPUs with collective keys of its own.

  Every MirroredStrategy numbers its collective ops from the same starting key, so a
  second strategy in one process reuses the first one's keys and the runtime rejects
  the mismatched shapes; TensorFlow's own strategy tests move the key base the same way.
  """
  tf.distribute.MirroredStrategy._collective_key_base += 100_000  # pylint: disable=protected-access
  return tf.distribute.MirroredStrategy(
      [d.name for d in tf.config.list_logical_devices('CPU')][:2])


@pytest.fixture
def run_into_a_closed_pipe():
  """Runs a command whose stdout has lost its reader, as `command --help | head` can.

  Returns `(args, **subprocess.run keywords) -> CompletedProcess` with stderr as text.
  """

  def run(args, **kwargs):
    reader, writer = os.pipe()
    os.close(reader)
    try:
      return subprocess.run(args, stdout=writer, stderr=subprocess.PIPE, text=True,
                            check=False, **kwargs)
    finally:
      os.close(writer)

  return run
