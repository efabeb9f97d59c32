"""Bits per character of every method on the character-level LM (the paper's Figure 4-left).

The paper published its char-LM results (WikiText-103, a GRU of 512, 200,000 steps) as a
plot only. This benchmark runs every method at 75% sparsity through
`rigl.char_lm.char_lm_train_eval` with `configs/char_lm_offline.gin` (every width a
quarter of the paper's, windows of 64 bytes, batches of 16, 2,000 steps; see that file)
on the text every Python installation ships (the CPython reference manual,
`pydoc_data`), over several seeds, and the sparse-from-scratch methods also twice as
long (`--training_steps_multiplier=2`, the paper's extended runs). Prints a markdown table
of mean +- std bits per character on the validation and test splits, writes it as JSON
(--out) and plots validation bits per character per method and training length (--plot).

  python bench/char_lm_table.py --out=bench/results/char_lm_table.json \
      --plot=bench/results/char_lm_table.png
"""

import bench_common  # pylint: disable=g-bad-import-order

import contextlib
import io
import os
import tempfile
import time

import numpy as np

# (table name, --training_method); the paper's Figure 4-left has all but SNIP.
METHODS = (('dense', 'baseline'), ('static', 'scratch'), ('set', 'set'),
           ('snfs', 'momentum'), ('rigl', 'rigl'), ('snip', 'snip'), ('pruning', 'prune'))
CONFIG = os.path.join(bench_common.REPO_ROOT, 'configs', 'char_lm_offline.gin')
QUICK_FLAGS = ('--embedding_size=8', '--gru_units=16', '--readout_units=12,8',
               '--sequence_length=16', '--batch_size=4', '--train_steps=20',
               '--maskupdate_frequency=5', '--maskupdate_end_step=20',
               '--sparsity_begin_step=5', '--sparsity_end_step=15', '--pruning_frequency=5',
               '--steps_per_eval=20', '--steps_per_checkpoint=20', '--steps_per_execution=5')


def parse_args():
  parser = bench_common.parser(__doc__.split('\n', 1)[0])
  parser.add_argument('--methods', default=','.join(name for name, _ in METHODS))
  parser.add_argument('--long_methods', default='static,set,snfs,rigl',
                      help='methods also trained --long_multiplier times as long')
  parser.add_argument('--long_multiplier', type=float, default=2.0)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--workers', type=int, default=2,
                      help='processes running in parallel, each with --threads threads')
  parser.add_argument('--plot', help='path of the PNG plot')
  args = parser.parse_args()
  if args.quick:
    # Two runs of a tiny model: one method at two lengths, the table and the plot.
    args.seeds, args.workers, args.methods, args.long_methods = 1, 1, 'rigl', 'rigl'
  return args


def train_and_evaluate(job):
  """Trains one (method, multiplier, seed) with the char-LM script; returns its results."""
  import absl.logging  # pylint: disable=g-import-not-at-top
  from rigl import script_flags  # pylint: disable=g-import-not-at-top
  from rigl.char_lm import char_lm_train_eval as clm  # pylint: disable=g-import-not-at-top
  name, multiplier, seed, quick = job
  absl.logging.set_verbosity(absl.logging.WARNING)
  method = dict(METHODS)[name]
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as output_dir:
    argv = ['char_lm_train_eval', f'--gin_config={CONFIG}', f'--output_dir={output_dir}',
            f'--training_method={method}', f'--seed={seed}',
            f'--training_steps_multiplier={multiplier}', '--mode=train',
            *(QUICK_FLAGS if quick else ())]
    clm.FLAGS.unparse_flags()
    try:
      script_flags.parse(clm.FLAGS, argv, clm.SCRIPT_NAME)  # the flags and the gin file
      with contextlib.redirect_stdout(io.StringIO()):  # the script's report
        summary = clm.run(*clm.setup())
    finally:
      clm.FLAGS.unparse_flags()
  return {'method': name, 'training_method': method, 'multiplier': multiplier, 'seed': seed,
          'valid_bpc': summary['valid_bits_per_character'],
          'test_bpc': summary['test_bits_per_character'],
          'global_sparsity': summary['global_sparsity'],
          'per_kernel_sparsity': summary['per_kernel_sparsity'],
          'steps': summary['steps'], 'model': summary['model'],
          'train_seconds': summary['train_seconds'],
          'inference_flops_ratio': summary['flops_per_character']['inference_flops_ratio'],
          'training_flops_ratio': summary['flops_per_character']['training_flops_ratio'],
          'seconds': time.perf_counter() - start}


def jobs_of(args):
  long_methods = [m for m in args.long_methods.split(',') if m]
  jobs = []
  for seed in range(args.seeds):
    for name in args.methods.split(','):
      jobs.append((name, 1.0, seed, args.quick))
      if name in long_methods:
        jobs.append((name, args.long_multiplier, seed, args.quick))
  # The longest first, so that two workers finish together.
  return sorted(jobs, key=lambda job: -job[1])


def summarize(runs):
  """{(method, multiplier): {...mean, std, n...}}."""
  groups = {}
  for run in runs:
    groups.setdefault((run['method'], run['multiplier']), []).append(run)
  summary = {}
  for key, group in groups.items():
    summary[key] = {
        'n': len(group),
        **{f'{split}_mean': float(np.mean([r[f'{split}_bpc'] for r in group]))
           for split in ('valid', 'test')},
        **{f'{split}_std': float(np.std([r[f'{split}_bpc'] for r in group]))
           for split in ('valid', 'test')},
        'global_sparsity': float(np.mean([r['global_sparsity'] for r in group])),
        'training_flops_ratio': group[0]['training_flops_ratio'],
        'inference_flops_ratio': group[0]['inference_flops_ratio'],
        'train_seconds': float(np.mean([r['train_seconds'] for r in group])),
    }
  return summary


def table_of(summary):
  header = ['method', 'training', 'valid bits/char', 'test bits/char', 'sparsity',
            'training FLOPs', 'inference FLOPs', 'runs']
  rows = []
  order = [name for name, _ in METHODS]
  for (name, multiplier), s in sorted(summary.items(),
                                      key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
    rows.append([name, f'{multiplier:g}x',
                 f"{s['valid_mean']:.3f} ± {s['valid_std']:.3f}",
                 f"{s['test_mean']:.3f} ± {s['test_std']:.3f}",
                 f"{s['global_sparsity']:.2f}", f"{s['training_flops_ratio']:.2f}x",
                 f"{s['inference_flops_ratio']:.2f}x", str(s['n'])])
  return bench_common.markdown_table(header, rows)


def plot(summary, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(7, 4.5))
  order = [name for name, _ in METHODS]
  lines = {'dense': ('black', '--'), 'pruning': ('tab:pink', ':'), 'snip': ('tab:brown', '-.')}
  for name in order:
    points = sorted((m, s) for (n, m), s in summary.items() if n == name)
    if len(points) == 1 and name in lines:  # a reference level, trained 1x only
      color, style = lines[name]
      axis.axhline(points[0][1]['valid_mean'], color=color, linestyle=style,
                   label=f'{name} {points[0][0]:g}x')
    elif points:
      axis.errorbar([m for m, _ in points], [s['valid_mean'] for _, s in points],
                    yerr=[s['valid_std'] for _, s in points], marker='o', capsize=3,
                    label=name)
  axis.set_xlabel('training steps multiplier')
  axis.set_ylabel('validation bits per character')
  axis.set_title(title)
  axis.grid(alpha=0.3)
  axis.legend(fontsize='small')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def main():
  args = parse_args()
  jobs = jobs_of(args)
  start = time.perf_counter()
  runs = bench_common.run_jobs(train_and_evaluate, jobs, args.workers, args.threads)
  summary = summarize(runs)
  results = {
      'config': {'command': bench_common.command_line(('--out', '--plot')),
                 'gin_config': os.path.relpath(CONFIG, bench_common.REPO_ROOT),
                 'seeds': args.seeds, 'workers': args.workers,
                 'threads_per_worker': args.threads, 'quick': args.quick,
                 'long_multiplier': args.long_multiplier},
      'machine': bench_common.machine(),
      'wall_seconds': time.perf_counter() - start,
      'summary': [{'method': k[0], 'multiplier': k[1], **v}
                  for k, v in sorted(summary.items())],
      'runs': runs,
  }
  if args.plot:
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    plot(summary, args.plot, f'char LM, 75% sparse (uniform), {args.seeds} seeds')
  bench_common.write_results(args.out, results, table_of(summary))


if __name__ == '__main__':
  main()
