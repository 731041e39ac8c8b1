"""The one exception type for mistakes a user can fix (paths, configs, data).

The command lines (run by `neft_jax.cli`) print a `UserError` as a single line
and exit with code 1 instead of showing a traceback; anything else is a bug.
"""

import contextlib
import sys


class UserError(Exception):
  """Bad input: the message names the file, key or value and what to do."""


@contextlib.contextmanager
def one_line_errors():
  """Around a command-line program's work: a UserError becomes one `error: ...`
  line on stderr and exit code 1."""
  try:
    yield
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
