"""Tests of the mask-record visualiser on synthetic records."""

import numpy as np
from PIL import Image
import pytest

from rigl.mnist import visualize_mask_records as vis


def write_records(path, steps):
  random = np.random.RandomState(0)
  records = {s: [random.rand(784, 300) < 0.1, random.rand(300, 100) < 0.2] for s in steps}
  np.save(path, records, allow_pickle=True)
  return records


def run_main(*args):
  vis.FLAGS.unparse_flags()
  try:
    vis.FLAGS(['visualize_mask_records', *args])
    vis.main(['visualize_mask_records'])
  finally:
    vis.FLAGS.unparse_flags()


def test_frame_steps_show_the_start_slowly_then_skip():
  assert vis.frame_steps(range(0, 100, 10), slow_until=3, skip_mask=4) == [
      0, 10, 20, 30, 70]
  assert vis.frame_steps([5, 0], slow_until=50, skip_mask=10) == [0, 5]


def test_connection_counts_are_outgoing_edges_per_pixel():
  mask = np.zeros((784, 300), bool)
  mask[29, :7] = True
  counts = vis.connection_counts(mask, (28, 28))
  assert counts[1, 1] == 7 and counts.sum() == 7


def test_writes_an_animated_gif_and_a_png(tmp_path, capsys):
  records_path = tmp_path / 'mask_records.npy'
  write_records(records_path, range(0, 60, 10))
  run_main(f'--records_path={records_path}', '--slow_until=2', '--skip_mask=2')
  gif = Image.open(tmp_path / 'mask_records.gif')
  # Steps 0 and 10, then every second of 20..50: four frames.
  assert gif.n_frames == 4
  assert Image.open(tmp_path / 'mask_records.png').size[0] > 0
  assert '4 frames (steps 0..40)' in capsys.readouterr().out


def test_second_layer_with_its_own_shape(tmp_path):
  records_path = tmp_path / 'records.npy'
  write_records(records_path, [0, 1])
  run_main(f'--records_path={records_path}', '--layer_id=1', '--new_shape=15,20',
           f'--save_path={tmp_path / "layer2.gif"}')
  assert (tmp_path / 'layer2.gif').exists() and (tmp_path / 'layer2.png').exists()


@pytest.mark.parametrize('args, message', [
    (('--records_path=/no/such/records.npy',), 'does not exist'),
    (('--new_shape=28',), '--new_shape=\'28\' must be two positive integers'),
    (('--layer_id=5',), '--layer_id=5: the records have 2 layers'),
    (('--new_shape=20,20',), 'do not fit --new_shape=20,20'),
])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
  records_path = tmp_path / 'mask_records.npy'
  write_records(records_path, [0])
  with pytest.raises(SystemExit, match=message) as error:
    run_main(f'--records_path={records_path}', *args)
  assert 'visualize_mask_records: error' in str(error.value)
