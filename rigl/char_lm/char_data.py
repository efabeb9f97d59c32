"""Byte streams for the character-level language model: WikiText-103, or a text that
every Python installation ships.

**WikiText-103** (Merity et al. 2016; `wikitext-103-raw-v1.zip`, unzipped): the raw files
`wiki.train.raw`, `wiki.valid.raw` and `wiki.test.raw` are read as the bytes of their
UTF-8 text (the vocabulary is the 256 byte values). The files are memory-mapped, never
read into Python objects: training windows are copied out of the map batch by batch.

**The embedded corpus** (no data directory): the CPython reference manual's topics that
the standard library ships in `pydoc_data.topics` (the text of `help('if')` and the
other keywords and topics; about 465,000 characters, all of it English prose and code),
joined in the order of their sorted names with a blank line between them. The first 90%
of its bytes train, the next 5% validate and the last 5% test. The text is the one of the
Python that runs, so its size changes a little between Python versions.

**Training** reads `batch_size` windows of `sequence_length + 1` bytes starting at
uniformly random offsets, the offsets of global batch `i` drawn from (seed, i) with a
stateless generator: the stream can start at any batch (an exactly resumable run) and
every input pipeline takes its slice of each global batch.

**Evaluation** predicts every byte of a split but the first exactly once: windows of
`sequence_length` predictions side by side (window `k` reads bytes `[kL, kL + L)` and
predicts bytes `[kL + 1, kL + L + 1)`), each from a zero GRU state; the last window is
padded, and the padding carries weight 0.
"""

import codecs
import dataclasses
import os

import numpy as np
import tensorflow as tf

SPLITS = ('train', 'valid', 'test')
WIKITEXT_FILES = {'train': 'wiki.train.raw', 'valid': 'wiki.valid.raw',
                  'test': 'wiki.test.raw'}
EMBEDDED_NAME = 'pydoc_data'
EMBEDDED_FRACTIONS = (0.9, 0.05)  # train, valid; test is the rest
_CHECK_CHUNK = 1 << 24


class DataError(ValueError):
  """The corpus cannot be read; the message says which file and why."""


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The byte arrays (uint8, possibly memory-mapped) of the three splits.

  Attributes:
    name: 'wikitext-103' or 'pydoc_data'.
    splits: {'train': array, 'valid': array, 'test': array}.
    description: one line saying what was read.
  """
  name: str
  splits: dict
  description: str

  def characters(self, split):
    return int(self.splits[split].shape[0])


def embedded_text():
  """The text of the embedded corpus (see the module docstring), as one string."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  return '\n\n'.join(topics.topics[name] for name in sorted(topics.topics))


def embedded_corpus():
  """The embedded corpus, split 90 / 5 / 5% by bytes."""
  data = np.frombuffer(embedded_text().encode('utf-8'), np.uint8)
  train_end = int(len(data) * EMBEDDED_FRACTIONS[0])
  valid_end = train_end + int(len(data) * EMBEDDED_FRACTIONS[1])
  splits = {'train': data[:train_end], 'valid': data[train_end:valid_end],
            'test': data[valid_end:]}
  description = (
      'No --data_directory: training on the CPython reference manual that ships with '
      f'Python (pydoc_data, {len(data):,} bytes; train / valid / test '
      f'{len(splits["train"]):,} / {len(splits["valid"]):,} / {len(splits["test"]):,}); '
      'give --data_directory for WikiText-103.')
  return Corpus(EMBEDDED_NAME, splits, description)


def _check_utf8(path, data):
  """Raises DataError unless `data` (the bytes of `path`) is UTF-8 text."""
  decoder = codecs.getincrementaldecoder('utf-8')()
  for start in range(0, len(data), _CHECK_CHUNK):
    chunk = bytes(data[start:start + _CHECK_CHUNK])
    try:
      decoder.decode(chunk, final=start + _CHECK_CHUNK >= len(data))
    except UnicodeDecodeError as error:
      raise DataError(
          f'{path} is not UTF-8 text (byte {start + error.start:,}: {error.reason}); '
          'give the raw WikiText-103 files (wikitext-103-raw-v1.zip, unzipped).') from None


def wikitext_corpus(directory, splits=SPLITS):
  """WikiText-103's raw files in `directory`, memory-mapped and checked.

  Args:
    directory: the folder holding `wiki.train.raw`, `wiki.valid.raw`, `wiki.test.raw`.
    splits: the splits to open (and check); the others are left out.

  Raises:
    DataError: the directory or a file is missing, or a file is unreadable, too short
      or not UTF-8 text.
  """
  if not os.path.isdir(directory):
    raise DataError(
        f'--data_directory={directory!r} is not a directory; give the folder of '
        'WikiText-103\'s raw files (wikitext-103-raw-v1.zip, unzipped), or no '
        '--data_directory to train on the text that ships with Python.')
  opened = {}
  for split in splits:
    path = os.path.join(directory, WIKITEXT_FILES[split])
    if not os.path.isfile(path):
      raise DataError(
          f'--data_directory={directory!r}: {WIKITEXT_FILES[split]} is missing; the '
          'directory must hold WikiText-103\'s raw files wiki.train.raw, wiki.valid.raw '
          'and wiki.test.raw (wikitext-103-raw-v1.zip, unzipped).')
    size = os.path.getsize(path)
    if size < 2:
      raise DataError(f'{path} holds {size} bytes; a text to model needs at least 2.')
    try:
      data = np.memmap(path, np.uint8, mode='r')
    except OSError as error:
      raise DataError(f'{path} cannot be read: {error}.') from None
    _check_utf8(path, data)
    opened[split] = data
  sizes = ', '.join(f'{split} {opened[split].shape[0]:,}' for split in splits)
  return Corpus('wikitext-103', opened,
                f'WikiText-103 from {directory} (bytes: {sizes}).')


def load(directory, splits=SPLITS, sequence_length=1):
  """The corpus of `--data_directory` (WikiText-103), or the embedded one if empty.

  Raises:
    DataError: a file is missing or malformed, or the training text is shorter than
      one window of `sequence_length + 1` bytes.
  """
  corpus = wikitext_corpus(directory, splits) if directory else embedded_corpus()
  if 'train' in splits and corpus.characters('train') < sequence_length + 1:
    raise DataError(
        f'The training text of {corpus.name} has {corpus.characters("train"):,} bytes, '
        f'fewer than one window of --sequence_length + 1 = {sequence_length + 1}.')
  return corpus


def evaluation_windows(characters, sequence_length):
  """Windows that predict each of `characters` bytes but the first once."""
  return -(-(characters - 1) // sequence_length)


def make_train_input_fn(data, batch_size, sequence_length, seed):
  """`(input_context, start_batch) -> dataset` of `(inputs, targets)` int32 batches.

  Global batch `i` holds `batch_size` windows at offsets drawn from (seed, i); each input
  pipeline takes its contiguous slice and batches it per replica.
  """
  window = sequence_length + 1
  starts_range = int(data.shape[0]) - sequence_length  # offsets 0 .. n - L - 1

  def copy_windows(starts):
    return np.stack([np.asarray(data[s:s + window]) for s in starts]).astype(np.int32)

  def train_input_fn(context, start_batch):
    share = batch_size // context.num_input_pipelines
    begin = context.input_pipeline_id * share
    per_replica = context.get_per_replica_batch_size(batch_size)

    def batch(index):
      starts = tf.random.stateless_uniform(
          [batch_size], tf.stack([tf.constant(seed, tf.int64), index]), 0, starts_range,
          dtype=tf.int64)[begin:begin + share]
      windows = tf.numpy_function(copy_windows, [starts], tf.int32, stateful=False)
      return tf.ensure_shape(windows, [share, window])

    return tf.data.Dataset.range(tf.cast(start_batch, tf.int64), np.iinfo(np.int64).max).map(
        batch).unbatch().batch(per_replica, drop_remainder=True).map(
            lambda w: (w[:, :-1], w[:, 1:])).prefetch(2)

  return train_input_fn


def make_eval_input_fn(data, sequence_length):
  """`input_context -> dataset` of `(inputs, targets, weights)` windows of one split.

  Every byte but the first is a target exactly once (see the module docstring); the
  weights are 1 on real targets and 0 on the padding of the last window.
  """
  n = int(data.shape[0])
  windows = evaluation_windows(n, sequence_length)

  def window(k):
    begin = int(k) * sequence_length
    chunk = np.asarray(data[begin:begin + sequence_length + 1]).astype(np.int32)
    targets = len(chunk) - 1
    padded = np.zeros(sequence_length + 1, np.int32)
    padded[:len(chunk)] = chunk
    weights = np.zeros(sequence_length, np.float32)
    weights[:targets] = 1.0
    return padded[:-1], padded[1:], weights

  def example(k):
    inputs, targets, weights = tf.numpy_function(
        window, [k], (tf.int32, tf.int32, tf.float32), stateful=False)
    shape = [sequence_length]
    return (tf.ensure_shape(inputs, shape), tf.ensure_shape(targets, shape),
            tf.ensure_shape(weights, shape))

  def eval_input_fn(context):
    return tf.data.Dataset.range(windows).shard(
        context.num_input_pipelines, context.input_pipeline_id).map(example)

  return eval_input_fn
