r"""Animates how a layer's connectivity to the input pixels evolves during training.

Reads `mask_records.npy` written by `mnist_train_eval --mask_record_frequency=N` and
shows, for every recorded step, each input unit's number of outgoing connections
(`sum(mask, axis=1)` reshaped to 28x28 for `layer1`). Writes an animated GIF and a PNG of
the last frame, with matplotlib alone (no external programs):

  python -m rigl.mnist.visualize_mask_records \
    --records_path=/tmp/mnist_rigl/mask_records.npy
"""

import os

from absl import app
from absl import flags
import numpy as np

from rigl import script_flags

# The script's own flags, not absl's global ones (see rigl/script_flags.py).
FLAGS = flags.FlagValues()

flags.DEFINE_string('records_path', '/tmp/mnist/mask_records.npy',
                    'mask_records.npy of a mnist_train_eval run.', flag_values=FLAGS)
flags.DEFINE_string('save_path', '', 'Where the GIF goes; empty: next to the records, as '
                    'mask_records.gif. The PNG of the last frame gets the same name with '
                    '.png.', flag_values=FLAGS)
flags.DEFINE_string('new_shape', '28,28', 'Shape the input units are shown in.', flag_values=FLAGS)
flags.DEFINE_integer('interval', 100, 'Milliseconds per frame.', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('layer_id', 0, 'Which recorded layer (0: layer1).', lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer('skip_mask', 10, 'After --slow_until, show every this-many-th record.',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('slow_until', 50, 'Show every one of the first this many records.',
                     lower_bound=0, flag_values=FLAGS)

# The colour scale of the original: about the mean count of a 90%-sparse layer1.
VMAX = 30


def load_records(path):
  """`{step: [bool mask per layer]}` from a mask_records.npy file."""
  if not os.path.exists(path):
    raise ValueError(f'--records_path={path!r} does not exist; write one with '
                     'mnist_train_eval --mask_record_frequency=N.')
  records = np.load(path, allow_pickle=True).item()
  if not isinstance(records, dict) or not records:
    raise ValueError(f'{path!r} holds no mask records.')
  return records


def parse_shape(text):
  try:
    shape = tuple(int(d) for d in text.split(','))
  except ValueError:
    shape = ()
  if len(shape) != 2 or min(shape) <= 0:
    raise ValueError(f'--new_shape={text!r} must be two positive integers like "28,28".')
  return shape


def frame_steps(steps, slow_until, skip_mask):
  """The recorded steps to show: all of the first `slow_until`, then every `skip_mask`."""
  steps = sorted(steps)
  return steps[:slow_until] + steps[slow_until::skip_mask]


def connection_counts(mask, shape):
  """Outgoing connections per input unit, as an image of `shape`."""
  counts = np.asarray(mask).sum(axis=1)
  if counts.size != shape[0] * shape[1]:
    raise ValueError(f'The layer has {counts.size} input units, which do not fit '
                     f'--new_shape={shape[0]},{shape[1]}.')
  return counts.reshape(shape)


def animate(records, layer_id, shape, gif_path, png_path, interval=100, slow_until=50,
            skip_mask=10):
  """Writes the GIF of the chosen frames and a PNG of the last one; returns the steps."""
  # Imported here, to choose the file-only backend before pyplot loads.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import animation  # pylint: disable=g-import-not-at-top
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  steps = frame_steps(records, slow_until, skip_mask)
  n_layers = len(records[steps[0]])
  if layer_id >= n_layers:
    raise ValueError(f'--layer_id={layer_id}: the records have {n_layers} layers.')
  images = [connection_counts(records[s][layer_id], shape) for s in steps]

  figure, axis = plt.subplots(figsize=(4, 4))
  picture = axis.imshow(images[0], vmin=0, vmax=VMAX)
  figure.colorbar(picture, ax=axis)
  axis.set_axis_off()
  title = axis.set_title('')

  def show(index):
    picture.set_data(images[index])
    title.set_text(f'connections per input, step {steps[index]}')
    return picture, title

  movie = animation.FuncAnimation(figure, show, frames=len(images), interval=interval,
                                  blit=False)
  movie.save(gif_path, writer=animation.PillowWriter(fps=max(1, round(1000 / interval))),
             dpi=80)
  show(len(images) - 1)
  figure.savefig(png_path, dpi=80)
  plt.close(figure)
  return steps


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    records = load_records(FLAGS.records_path)
    shape = parse_shape(FLAGS.new_shape)
    gif_path = FLAGS.save_path or os.path.join(
        os.path.dirname(os.path.abspath(FLAGS.records_path)), 'mask_records.gif')
    png_path = os.path.splitext(gif_path)[0] + '.png'
    steps = animate(records, FLAGS.layer_id, shape, gif_path, png_path, FLAGS.interval,
                    FLAGS.slow_until, FLAGS.skip_mask)
  except ValueError as error:
    raise SystemExit(f'visualize_mask_records: error: {error}') from None
  print(f'{len(steps)} frames (steps {steps[0]}..{steps[-1]}) -> {gif_path}, {png_path}')


if __name__ == '__main__':
  app.run(main, flags_parser=script_flags.parser(FLAGS))
