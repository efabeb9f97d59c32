"""Tests of `python -m rigl.char_lm.char_lm_train_eval` with a tiny GRU and tens of steps.

The runs go through the script's own flag parsing and `setup`/`run` in this process, on a
small WikiText-103-shaped data directory written by the test (a few seconds each).
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from rigl import flops
from rigl import masking
from rigl.char_lm import char_data
from rigl.char_lm import char_lm_model
from rigl.char_lm import char_lm_train_eval as clm

TINY = ('--embedding_size=8', '--gru_units=16', '--readout_units=12,8',
        '--sequence_length=16', '--batch_size=4', '--eval_batch_size=8',
        '--train_steps=12', '--steps_per_eval=6', '--steps_per_checkpoint=6',
        '--steps_per_execution=3', '--summary_steps=3')
DST = ('--maskupdate_frequency=3', '--maskupdate_end_step=12', '--drop_fraction=0.3')
PRUNE = ('--sparsity_begin_step=0', '--sparsity_end_step=8', '--pruning_frequency=2')
KERNELS = {'gru/gru_cell': (8, 48), 'gru/gru_cell/recurrent_kernel': (16, 48),
           'readout_1': (16, 12), 'readout_2': (12, 8)}
TEXT = ('The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor '
        'jugs! How vexingly quick daft zebras jump; sphinx of black quartz, judge my vow. '
        'Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 unicode bytes too.\n')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """wiki.{train,valid,test}.raw of a few kilobytes (valid: 3 windows, the last partial)."""
  directory = tmp_path_factory.mktemp('wikitext')
  (directory / 'wiki.train.raw').write_text(TEXT * 20, encoding='utf-8')
  (directory / 'wiki.valid.raw').write_text(TEXT[:41], encoding='utf-8')
  (directory / 'wiki.test.raw').write_text(TEXT[50:120], encoding='utf-8')
  return directory


def run_script(output_dir, data_dir, *args, run=True):
  """Parses the script's flags and runs it here; returns summary.json's dict (or, with
  `run=False`, what `setup` returns)."""
  argv = ['char_lm_train_eval', f'--output_dir={output_dir}',
          f'--data_directory={data_dir or ""}', *TINY, *args]
  clm.FLAGS.unparse_flags()
  try:
    clm.FLAGS(argv)
    if clm.FLAGS.mode == 'sample':
      return clm.sample()
    parts = clm.setup()
    return clm.run(*parts) if run else parts
  finally:
    clm.FLAGS.unparse_flags()


@pytest.fixture(scope='module')
def rigl_run(tmp_path_factory, data_dir):
  """One RigL run of the tiny model that several tests read (training is the slow part).

  Returns `(output_dir, loop, summary, masks before training)`. Tests that use it may add
  files to its directory but never change its checkpoints.
  """
  out = tmp_path_factory.mktemp('rigl_run') / 'run'
  argv = ['char_lm_train_eval', f'--output_dir={out}', f'--data_directory={data_dir}',
          *TINY, '--training_method=rigl', *DST]
  clm.FLAGS.unparse_flags()
  try:
    clm.FLAGS(argv)
    loop, recorder, corpus = clm.setup()
    initial = {masking.kernel_spec(k).key: np.asarray(m).copy()
               for k, m in masking.masked_kernels(loop.model)}
    summary = clm.run(loop, recorder, corpus)
  finally:
    clm.FLAGS.unparse_flags()
  return out, loop, summary, initial


def checkpoint_values(output_dir):
  reader = tf.train.load_checkpoint(str(output_dir))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if k not in ('_CHECKPOINTABLE_OBJECT_GRAPH',
                       'save_counter/.ATTRIBUTES/VARIABLE_VALUE')}


@pytest.mark.parametrize('method, extra', [
    ('baseline', ()),
    ('scratch', ()),
    ('static', DST),
    ('set', DST),
    ('momentum', DST),
    ('rigl', DST),
    ('snip', ()),
    ('dnw', ()),
    ('prune', PRUNE),
])
def test_every_method_trains_to_its_sparsity(tmp_path, data_dir, request, method, extra):
  if method == 'rigl':
    out, _, summary, _ = request.getfixturevalue('rigl_run')
  else:
    out = tmp_path / method
    summary = run_script(out, data_dir, f'--training_method={method}', *extra)
  assert summary['steps'] == 12 and summary['corpus'] == 'wikitext-103'
  if method == 'baseline':
    assert summary['per_kernel_sparsity'] == {} and summary['global_sparsity'] == 0
  else:
    # Uniform 75% of every masked kernel (all four sizes are multiples of 4).
    assert summary['per_kernel_sparsity'] == {key: 0.75 for key in KERNELS}
    assert summary['global_sparsity'] == 0.75
  for split, characters in (('valid', 40), ('test', 69)):
    assert summary[f'{split}_characters'] == characters
    assert 0 < summary[f'{split}_bits_per_character'] < 9
    assert summary[f'{split}_bits_per_character'] == pytest.approx(
        summary[f'{split}_loss_nats'] / math.log(2))
  written = json.loads((out / 'summary.json').read_text())
  assert written['valid_bits_per_character'] == summary['valid_bits_per_character']
  history = json.loads((out / 'history.json').read_text())
  assert [h['step'] for h in history] == [6, 12]
  assert history[-1]['bits_per_character'] == summary['valid_bits_per_character']
  for name in ('training_curves.png', 'model.ckpt-12.index', 'flags.json'):
    assert (out / name).exists(), name
  assert list((out / 'train').iterdir()) and list((out / 'eval').iterdir())


def test_gru_kernels_and_recurrent_kernels_are_masked_at_the_target(rigl_run):
  _, loop, _, initial = rigl_run
  masked = {masking.kernel_spec(k).key: (k, m) for k, m in masking.masked_kernels(loop.model)}
  assert set(masked) == set(KERNELS)
  for key, (kernel, mask) in masked.items():
    mask, kernel = np.asarray(mask), np.asarray(kernel)
    assert mask.shape == KERNELS[key]
    assert 1 - mask.mean() == 0.75, key
    assert np.all(kernel[mask == 0] == 0), key  # inactive weights stay exactly zero
  # RigL moved connections of the recurrent kernel, keeping their number.
  recurrent = np.asarray(masked['gru/gru_cell/recurrent_kernel'][1])
  assert (recurrent != initial['gru/gru_cell/recurrent_kernel']).any()
  # The embedding (also the output projection) stays dense.
  embedding = loop.model.get_layer('embedding').embeddings
  assert masking.get_mask(embedding) is None
  assert np.count_nonzero(np.asarray(embedding)) == embedding.shape[0] * embedding.shape[1]


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, data_dir,
                                                                   rigl_run):
  straight_dir, _, straight, _ = rigl_run
  args = ('--training_method=rigl', *DST)
  # Stops at step 6 with a checkpoint, then continues to 12 (--train_steps may grow), in
  # chunks of 2 steps rather than 3 (how many steps a compiled call runs is free).
  first = run_script(tmp_path / 'resumed', data_dir, *args, '--train_steps=6')
  assert first['steps'] == 6
  resumed = run_script(tmp_path / 'resumed', data_dir, *args, '--steps_per_execution=2')
  assert resumed['resumed_from_step'] == 6
  assert resumed['valid_bits_per_character'] == straight['valid_bits_per_character']
  expected = checkpoint_values(straight_dir)
  actual = checkpoint_values(tmp_path / 'resumed')
  assert expected.keys() == actual.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_a_run_continues_only_with_its_own_flags(data_dir, rigl_run):
  out = rigl_run[0]
  with pytest.raises(ValueError, match="--gru_units=16 there, 32 now"):
    run_script(out, data_dir, '--training_method=rigl', *DST, '--gru_units=32')
  # The data folder may move, but not turn into the built-in text.
  with pytest.raises(ValueError, match=r"holds a run on WikiText-103 in '.*'; this command "
                     r'reads the built-in text \(no --data_directory\)'):
    run_script(out, None, '--training_method=rigl', *DST, '--mode=eval_once')


def _hand_bits_per_character(model, data, sequence_length):
  """Mean -log2 p(next byte) over every byte but the first, window by window."""
  total, count = 0.0, 0
  for begin in range(0, len(data) - 1, sequence_length):
    chunk = data[begin:begin + sequence_length + 1]
    logits = np.asarray(model(chunk[None, :-1].astype(np.int32)), np.float64)[0]
    log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                            keepdims=True)) - logits.max(-1, keepdims=True)
    total -= log_p[np.arange(len(chunk) - 1), chunk[1:]].sum()
    count += len(chunk) - 1
  assert count == len(data) - 1
  return total / count / math.log(2)


def test_bits_per_character_equal_a_hand_computation(tmp_path, data_dir):
  loop, _, corpus = run_script(tmp_path / 'run', data_dir, '--training_method=rigl',
                               run=False)
  valid = corpus.splits['valid']
  assert len(valid) == 41  # 40 predictions: windows of 16, 16 and 8
  evaluated = clm.evaluate_split(loop, corpus, 'valid', 16)[clm.BITS]
  assert evaluated == pytest.approx(_hand_bits_per_character(loop.model, valid, 16),
                                    rel=1e-5)
  # With every weight zero, each byte has probability 1/256: exactly 8 bits.
  for variable in loop.model.weights:
    variable.assign(tf.zeros_like(variable))
  assert clm.evaluate_split(loop, corpus, 'test', 16)[clm.BITS] == pytest.approx(8.0, abs=1e-6)


def test_sampling_is_deterministic_given_a_seed(data_dir, rigl_run, capsys):
  out = rigl_run[0]
  capsys.readouterr()
  sample = ('--mode=sample', '--prompt=The quick', '--num_characters=40',
            '--training_method=rigl', *DST)
  first = run_script(out, data_dir, *sample, '--sample_seed=3')
  printed = capsys.readouterr().out
  assert first.startswith(b'The quick') and len(first) == len(b'The quick') + 40
  assert printed == first.decode('utf-8', errors='replace') + '\n'
  assert run_script(out, data_dir, *sample, '--sample_seed=3') == first
  assert run_script(out, data_dir, *sample, '--sample_seed=4') != first


def test_the_sampler_continues_the_prompt_with_the_models_own_predictions():
  keras.utils.set_random_seed(0)
  model = char_lm_model.build_model(8, 16, (12, 8), l2=0.0)
  sample = char_lm_model.make_sampler(model)
  greedy = sample(b'abc', 6, temperature=0.0, seed=1)
  assert greedy == sample(b'abc', 6, temperature=0.0, seed=2)  # no draws at all
  # Each greedy byte is the argmax of the full model run on everything before it.
  text = b'abc' + greedy
  for i in range(3, len(text)):
    logits = np.asarray(model(np.frombuffer(text[:i], np.uint8)[None].astype(np.int32)))
    assert logits[0, -1].argmax() == text[i]
  assert sample(b'', 5, 1.0, 0) == sample(b'\n', 5, 1.0, 0)
  with pytest.raises(ValueError, match='temperature'):
    sample(b'a', 1, temperature=-1.0)


def test_sampling_needs_a_checkpoint(tmp_path):
  with pytest.raises(ValueError, match='no checkpoint in'):
    run_script(tmp_path, None, '--mode=sample')


def test_eval_once_reproduces_the_training_result(data_dir, rigl_run):
  out, _, trained, _ = rigl_run
  evaluated = run_script(out, data_dir, '--training_method=rigl', *DST, '--mode=eval_once')
  assert evaluated['test_bits_per_character'] == trained['test_bits_per_character']
  assert (out / 'eval_once_summary.json').exists()


@pytest.mark.parametrize('files, message', [
    ({'wiki.train.raw': 'text ' * 10, 'wiki.valid.raw': 'text'}, 'wiki.test.raw is missing'),
    ({'wiki.train.raw': b'PK\x03\x04\xff\xfe zip', 'wiki.valid.raw': 'ab',
      'wiki.test.raw': 'ab'}, r'wiki.train.raw is not UTF-8 text \(byte 4'),
    ({'wiki.train.raw': 'short', 'wiki.valid.raw': 'ab', 'wiki.test.raw': 'ab'},
     'has 5 bytes, fewer than one window'),
    ({'wiki.train.raw': 'text ' * 10, 'wiki.valid.raw': '', 'wiki.test.raw': 'ab'},
     'wiki.valid.raw holds 0 bytes'),
])
def test_a_missing_or_malformed_file_is_one_clear_line(tmp_path, files, message):
  for name, content in files.items():
    path = tmp_path / name
    if isinstance(content, bytes):
      path.write_bytes(content)
    else:
      path.write_text(content)
  with pytest.raises(char_data.DataError, match=message) as raised:
    run_script(tmp_path / 'out', tmp_path)
  assert '\n' not in str(raised.value)


def test_the_script_stops_on_a_data_directory_that_is_not_there_with_one_line(tmp_path):
  missing = tmp_path / 'wikitext-103-raw'
  clm.FLAGS.unparse_flags()
  try:
    clm.FLAGS(['char_lm_train_eval', f'--output_dir={tmp_path / "out"}',
               f'--data_directory={missing}', *TINY])
    with pytest.raises(SystemExit) as stopped:
      clm.main(['char_lm_train_eval'])
  finally:
    clm.FLAGS.unparse_flags()
  message = str(stopped.value.code)
  assert message.startswith(
      f"char_lm_train_eval: error: --data_directory='{missing}' is not a directory")
  assert '\n' not in message


def test_the_embedded_corpus_is_split_deterministically():
  first, second = char_data.embedded_corpus(), char_data.embedded_corpus()
  sizes = [first.characters(s) for s in char_data.SPLITS]
  total = len(char_data.embedded_text().encode('utf-8'))
  assert total > 400_000
  assert sizes == [int(0.9 * total), int(0.05 * total),
                   total - int(0.9 * total) - int(0.05 * total)]
  for split in char_data.SPLITS:
    np.testing.assert_array_equal(first.splits[split], second.splits[split])
  assert 'pydoc_data' in first.description and '\n' not in first.description


def test_training_windows_depend_only_on_the_batch_index(data_dir):
  data = np.frombuffer((data_dir / 'wiki.train.raw').read_bytes(), np.uint8)
  input_fn = char_data.make_train_input_fn(data, 4, 16, seed=5)
  context = tf.distribute.InputContext()
  stream = [b for b in input_fn(context, tf.constant(0, tf.int64)).take(5)]
  later = [b for b in input_fn(context, tf.constant(3, tf.int64)).take(2)]
  for (x, y), (x2, y2) in zip(stream[3:], later):
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
  x, y = stream[0]
  assert x.shape == (4, 16) and y.shape == (4, 16)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the next bytes
  # Two input pipelines take the two halves of each global batch.
  halves = [next(iter(input_fn(tf.distribute.InputContext(2, i, 2),
                               tf.constant(0, tf.int64))))[0] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), x)


def test_flops_count_the_gates_of_the_gru_by_hand():
  sizes = dict(embedding_size=8, gru_units=16, readout_units=[12, 8])
  dense = flops.count_run(model_architecture='char_lm', training_method='baseline',
                          char_lm_sizes=sizes)
  # GRU: 3 gates in both kernels, a mult and an add per weight, 11 ops per unit;
  # readout: 2 per weight + a ReLU per output; tied logits 8x256: 2 per weight + 256.
  gru = 2 * (8 * 48 + 16 * 48) + 11 * 16
  readout = 2 * 16 * 12 + 12 + 2 * 12 * 8 + 8
  logits = 2 * 8 * 256 + 256
  assert dense['inference_flops'] == gru + readout + logits
  sparse = flops.count_run(model_architecture='char_lm', training_method='rigl',
                           mask_init_method='random', end_sparsity=0.75,
                           char_lm_sizes=sizes)
  kept = 0.25 * (8 * 48 + 16 * 48 + 16 * 12 + 12 * 8)
  assert sparse['inference_flops'] == dense['inference_flops'] - 2 * 3 * kept
  f_s, f_d = sparse['inference_flops'], dense['inference_flops']
  assert sparse['training_flops_ratio'] == pytest.approx(
      (3 * f_s * 100 + 2 * f_s + f_d) / 101 / (3 * f_d))
  snfs = flops.count_run(model_architecture='char_lm', training_method='momentum',
                         mask_init_method='random', end_sparsity=0.75, char_lm_sizes=sizes)
  assert snfs['training_flops_ratio'] == pytest.approx((2 * f_s + f_d) / (3 * f_d))


def test_flops_of_the_papers_model_per_method():
  """The README's table: training and inference FLOPs relative to dense, 75% uniform."""
  paper = {}
  for method in ('baseline', 'scratch', 'set', 'momentum', 'rigl', 'prune'):
    paper[method] = flops.count_run(
        model_architecture='char_lm', training_method=method, mask_init_method='random',
        end_sparsity=0.75, train_steps=200000, sparsity_begin_step=50000,
        sparsity_end_step=150000, pruning_frequency=1000)
  assert paper['baseline']['dense_inference_flops'] == paper['rigl']['dense_inference_flops']
  assert f"{paper['rigl']['inference_flops_ratio']:.3f}" == '0.273'
  assert paper['set']['training_flops_ratio'] == paper['set']['inference_flops_ratio']
  assert (paper['set']['training_flops_ratio'] < paper['rigl']['training_flops_ratio'] <
          paper['momentum']['training_flops_ratio'] < paper['prune']['training_flops_ratio']
          < 1)


def test_the_script_refuses_sizes_that_do_not_fit(tmp_path, data_dir):
  with pytest.raises(ValueError, match='with --tie_embedding the last width'):
    run_script(tmp_path, data_dir, '--readout_units=12,9')
  with pytest.raises(ValueError, match='needs --sparsity_begin_step < --sparsity_end_step'):
    run_script(tmp_path, data_dir, '--training_method=prune', '--sparsity_end_step=50')
  untied = run_script(tmp_path / 'untied', data_dir, '--readout_units=12,9',
                      '--notie_embedding', '--training_method=scratch')
  # The untied output layer stays dense, like the embedding.
  assert set(untied['per_kernel_sparsity']) == {
      'gru/gru_cell', 'gru/gru_cell/recurrent_kernel', 'readout_1', 'readout_2'}


def test_the_model_is_the_papers_by_default():
  keras.utils.set_random_seed(0)
  model = char_lm_model.build_model()
  shapes = {v.path: tuple(v.shape) for v in model.weights}
  assert shapes == {
      'embedding/embeddings': (256, 128), 'embedding/output_bias': (256,),
      'gru/gru_cell/kernel': (128, 1536), 'gru/gru_cell/recurrent_kernel': (512, 1536),
      'gru/gru_cell/bias': (2, 1536), 'readout_1/kernel': (512, 256),
      'readout_1/bias': (256,), 'readout_2/kernel': (256, 128), 'readout_2/bias': (128,)}
  assert model.output_shape == (None, None, 256)
  assert model.count_params() == 1_183_360
