"""TensorFlow Datasets access shared by the scripts, with errors that say what to do.

Without a route to the download host TFDS retries for minutes before it fails; the
scripts check first and stop at once with advice instead.
"""

import socket

import tensorflow_datasets as tfds

# Where TFDS downloads MNIST and CIFAR-10 from.
DOWNLOAD_HOST = 'storage.googleapis.com'


class DataError(Exception):
  """The dataset could not be loaded; the message says what to do."""


def download_host_reachable(host=DOWNLOAD_HOST, timeout_s=3.0):
  """Whether a TCP connection to `host`:443 opens within `timeout_s` seconds."""
  try:
    socket.create_connection((host, 443), timeout=timeout_s).close()
    return True
  except OSError:
    return False


def tfds_builder(name, data_dir, advice, downloadable=True):
  """The TFDS builder of `name`, prepared or at least downloadable from here.

  Args:
    name: the TFDS dataset name.
    data_dir: TFDS's data directory (None: its default).
    advice: what the user can do instead, appended to every error.
    downloadable: whether TFDS can download the dataset itself (imagenet2012 needs a
      manual download).

  Raises:
    DataError: the dataset is not prepared and cannot be downloaded.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
  except Exception as error:  # pylint: disable=broad-except
    raise DataError(f'TensorFlow Datasets cannot open {name} (data_dir={data_dir!r}): '
                    f'{type(error).__name__}: {error}; {advice}') from error
  if prepared:
    return builder
  if not downloadable:
    raise DataError(f'{name} is not prepared in the TensorFlow Datasets directory '
                    f'(data_dir={data_dir!r}) and TFDS cannot download it; {advice}')
  if not download_host_reachable():
    raise DataError(
        f'{name} is not in the TensorFlow Datasets directory (data_dir={data_dir!r}) and '
        f'cannot be downloaded: {DOWNLOAD_HOST} is unreachable from this machine; '
        f'{advice}')
  return builder


def is_available(name, data_dir):
  """Whether `name` is prepared in `data_dir` or can be downloaded now."""
  try:
    tfds_builder(name, data_dir, advice='')
    return True
  except DataError:
    return False


def load(name, split, data_dir, advice, downloadable=True, **kwargs):
  """`tfds.load` after `tfds_builder`'s checks; failures become `DataError`s."""
  tfds_builder(name, data_dir, advice, downloadable)
  try:
    return tfds.load(name, split=split, data_dir=data_dir, **kwargs)
  except Exception as error:  # pylint: disable=broad-except
    # Without network TFDS fails in many ways (DNS, download, missing modules).
    raise DataError(
        f'Could not load {name} through TensorFlow Datasets (data_dir={data_dir!r}): '
        f'{type(error).__name__}: {error}. This machine may have no network access; '
        f'{advice}') from error
