"""The evaluation history of a run, `history.json`, and its picture, shared by the scripts.

`HistoryRecorder` is a `train_lib.Hook`: after every evaluation during training it adds
an entry (step, epoch, accuracy, loss, global and per-layer sparsity, training time,
and whatever `extra_entry` adds), writes it just before each checkpoint and, when a run
resumes, cuts it back to the restored step, so a resumed run writes the same history
as an uninterrupted one. The training time counts every invocation that trained the
steps up to the checkpoint (`train_seconds.json` keeps it per checkpoint). `write_plot`
draws accuracy and sparsity over training.
"""

import json
import os

from rigl import train_lib

HISTORY_FILE = 'history.json'
TRAIN_SECONDS_FILE = 'train_seconds.json'


def atomic_write(path, write):
  """Writes through a temporary file, so a killed run never leaves half a file."""
  temporary = path + '.tmp'
  write(temporary)
  os.replace(temporary, path)


def write_json(path, value):
  def write(temporary):
    with open(temporary, 'w') as f:
      json.dump(value, f, indent=2)

  atomic_write(path, write)


class HistoryRecorder(train_lib.Hook):
  """Keeps `<output_dir>/history.json` in step with the checkpoints.

  Args:
    output_dir: the run's directory.
    steps_per_epoch: for each entry's `epoch`.
  """

  def __init__(self, output_dir, steps_per_epoch):
    self.output_dir = output_dir
    self.steps_per_epoch = steps_per_epoch
    self.history = []
    # {step of a checkpoint: seconds of training up to it, over every invocation}.
    self.checkpoint_seconds = {}
    self.seconds_before = 0.0

  def path(self, name):
    return os.path.join(self.output_dir, name)

  def train_seconds(self, loop):
    """Seconds of training up to the loop's step, earlier invocations included."""
    return self.seconds_before + loop.train_seconds

  def begin(self, loop, step):
    if os.path.exists(self.path(HISTORY_FILE)):
      with open(self.path(HISTORY_FILE)) as f:
        self.history = [h for h in json.load(f) if h['step'] <= step]
    if os.path.exists(self.path(TRAIN_SECONDS_FILE)):
      with open(self.path(TRAIN_SECONDS_FILE)) as f:
        self.checkpoint_seconds = {s: t for s, t in json.load(f).items() if int(s) <= step}
    self.seconds_before = self.checkpoint_seconds.get(str(step), 0.0)

  def extra_entry(self, loop, step):
    """More fields of an entry; override."""
    del loop, step
    return {}

  def after_eval(self, loop, step, metrics):
    entry = {
        'epoch': int(step // self.steps_per_epoch), 'step': step,
        'loss': metrics['loss'], 'accuracy': metrics['accuracy'],
        'top_5_accuracy': metrics['top_5_accuracy'],
        'global_sparsity': metrics.get('global_sparsity', 0.0),
        'sparsity': {k[len('sparsity/'):]: v for k, v in metrics.items()
                     if k.startswith('sparsity/')},
        'train_seconds': self.train_seconds(loop), **self.extra_entry(loop, step)}
    self.history = [h for h in self.history if h['step'] < step] + [entry]

  def before_checkpoint(self, loop, step):
    self.checkpoint_seconds[str(step)] = self.train_seconds(loop)
    if loop.is_chief:
      self.persist()

  def end(self, loop, step):
    self.checkpoint_seconds[str(step)] = self.train_seconds(loop)
    if loop.is_chief:
      self.persist()

  def persist(self):
    write_json(self.path(HISTORY_FILE), self.history)
    write_json(self.path(TRAIN_SECONDS_FILE), self.checkpoint_seconds)


def write_plot(history, path, title, layers=None, extra_panel=None,
               metric=('accuracy', 'test accuracy')):
  """Accuracy (or `metric`) and sparsity over training (and an optional panel), as one PNG.

  Args:
    history: `HistoryRecorder.history`.
    path: the PNG to write.
    title: the figure's title.
    layers: the layers whose sparsity is drawn (default: every layer; the legend names
      them when there are at most 10).
    extra_panel: `(key, y label)`: also draws `entry[key][layer]` per layer.
    metric: `(key, y label)` of the top panel's `entry[key]`.
  """
  # Imported here, to choose the file-only backend before pyplot loads.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  steps = [h['step'] for h in history]
  layers = list(layers or (history[-1]['sparsity'] if history else []))
  panels = 3 if extra_panel else 2
  figure, axes = plt.subplots(panels, 1, figsize=(7, 3 + 3 * (panels - 1)), sharex=True)
  top, middle = axes[0], axes[1]
  top.plot(steps, [h[metric[0]] for h in history], marker='.')
  top.set_ylabel(metric[1])
  top.grid(alpha=0.3)
  top.set_title(title)
  legend = len(layers) <= 10
  for name in layers:
    middle.plot(steps, [h['sparsity'].get(name, 0.0) for h in history],
                label=name if legend else None, alpha=1.0 if legend else 0.4)
  middle.plot(steps, [h['global_sparsity'] for h in history], 'k--', label='global')
  middle.set_ylabel('sparsity')
  middle.set_ylim(-0.02, 1.02)
  middle.legend(loc='lower right', fontsize='small')
  middle.grid(alpha=0.3)
  if extra_panel:
    key, label = extra_panel
    for name in layers:
      axes[2].plot(steps, [h[key][name] for h in history], label=name)
    axes[2].set_ylabel(label)
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].legend(loc='upper left', fontsize='small')
    axes[2].grid(alpha=0.3)
  axes[-1].set_xlabel('step')
  figure.tight_layout()
  figure.savefig(path, dpi=80)
  plt.close(figure)
