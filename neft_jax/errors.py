"""The one exception type for mistakes a user can fix (paths, configs, data).

Command-line entry points print a `UserError` as a single line and exit with a
non-zero code instead of showing a traceback; anything else is a bug.
"""


class UserError(Exception):
  """Bad input: the message names the file, key or value and what to do."""
