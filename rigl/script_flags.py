"""Command-line flags kept per script instead of in absl's global `FLAGS`.

The scripts share flag names (`--output_dir`, `--mode`, `--seed`, `--save_path`...), so
defining them all in the global `FLAGS` would make importing two scripts into one process
(a test session, a notebook) fail with `DuplicateFlagError`. Each script defines its
flags in its own `flags.FlagValues()` and runs with `app.run(main,
flags_parser=script_flags.parser(FLAGS))`.
"""

import sys

from absl import flags

_HELP_ARGS = ('-h', '-help', '--help', '-helpshort', '--helpshort', '-?')


def parser(script_flags):
  """An `app.run` flags_parser: `script_flags` first, absl's own flags after.

  Errors print absl's one-line "FATAL Flags parsing error" and exit with status 1,
  without a stack trace; --help prints the script's flags.
  """

  def parse(argv):
    if any(arg in _HELP_ARGS for arg in argv[1:]):
      print(script_flags.get_help())
      sys.exit(0)
    try:
      remaining = script_flags(argv, known_only=True)
      return flags.FLAGS(remaining)
    except flags.Error as error:
      sys.stderr.write(f'FATAL Flags parsing error: {error}\n'
                       'Pass --help to see the flags.\n')
      sys.exit(1)

  return parse
