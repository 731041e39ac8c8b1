"""The one runner of neft_jax's command lines: flags, console, log file, one-line errors.

A program defines its flags and a `main(FLAGS)`, and ends with

    if __name__ == "__main__":
      cli.run(main, define_flags)

`run` parses the flags with every mistake as one `error:` line and exit code 1
(a misspelt `--config.a.b` override with the config's suggestion, a value of
the wrong type, a config file that does not exist, an unknown flag, a stray
argument), then runs `main` with a `UserError` printed the same way.

Logging: the console (stderr, written through tqdm so that lines do not break a
progress bar) shows neft_jax's own INFO lines and every logger's warnings and
errors. The full log, every logger at INFO (Orbax, JAX, absl ...), goes to the
file that `main` names with `log_to`, once its folder exists: records before
that are kept and written first, and a program that stops before its folder is
made writes nothing.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
import sys
from typing import Callable, NoReturn

from absl import app, flags
from absl import logging as absl_logging
from etils import epath
from ml_collections import config_flags
from tqdm import tqdm

from neft_jax.errors import UserError, one_line_errors

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s] %(message)s"
_FILE_ONLY = "neft_jax_file_only"  # a record attribute: keep it off the console
# Library warnings that only restate what neft_jax asked for: kept in the run log, off the console.
_EXPECTED_WARNINGS = (
    ("absl", "Given directory is read only"),  # Orbax, on checkpoints opened to read them
    # Orbax with keep-best, on a checkpoint between evaluations: it is kept as one of the latest
    ("absl", "Requested `tracked_metric`; did not provide metrics"),
)
_logger = logging.getLogger(__name__)


def run(main: Callable[[flags.FlagValues], object], define_flags: Callable[[], None]) -> None:
  """Defines the flags, parses them and runs `main(flags.FLAGS)` (see the module's doc)."""
  define_flags()
  app.run(lambda argv: _run_main(main), flags_parser=parse_flags)


def log_to(path: str | None) -> None:
  """Sends the program's full log to `path` (None: nowhere) once its folder exists.

  Does nothing outside `run` (a library call logs where its caller says).
  """
  if _run_log is not None:
    _run_log.path = path


# Flags ---------------------------------------------------------------------------

def fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, each mistake reported as one `error:` line with exit code 1."""
  try:
    rest = flags.FLAGS(argv)
    _check_config_files()
  except Exception as e:  # every failure here is a flag or config file to fix
    fail(_flag_error(e, argv))
  if len(rest) > 1:
    fail(f"unexpected argument(s) {rest[1:]}; every setting is a flag, --name=value")
  return rest


def _config_flag_names() -> list[str]:
  """The flags that hold a config file (`--config` and any others)."""
  return [name for name in flags.FLAGS if flags.FLAGS[name].flag_type() == "config object"]


def _check_config_files() -> None:
  """ml_collections keeps a config file's load error until the config is read: read it now."""
  for name in _config_flag_names():
    config = flags.FLAGS[name].value
    if config is not None:
      try:
        config.get  # noqa: B018  (a config that failed to load raises on any attribute)
      except OSError as e:
        raise _ConfigFileError(name, e) from None


class _ConfigFileError(Exception):
  def __init__(self, name: str, error: OSError):
    super().__init__(name, error)
    self.name, self.error = name, error


def _flag_error(e: Exception, argv: list[str]) -> str:
  """One line that says which flag is wrong and how."""
  if isinstance(e, _ConfigFileError) or (isinstance(e, OSError) and "config file" in str(e)):
    name = e.name if isinstance(e, _ConfigFileError) else "config"
    path = _flag_argument(name, argv)
    file = path.split(":", 1)[0]
    if file and not os.path.exists(file):
      return f"--{name}={path}: {file} does not exist; give a config file such as configs/demo.py"
    cause = getattr(e, "error", e)
    cause = cause.__cause__ or cause
    return f"--{name}={path} could not be loaded: {_last_line(str(cause))}"
  if isinstance(e, (KeyError, AttributeError)) and e.args:  # an override's key is not in the config
    text = str(e.args[0])
    missing = _missing_key(text)
    if missing:
      key, suggestion = missing
      message = f"{_override_naming(key, argv)}: the config has no key '{key}'"
      if suggestion:
        message += "; " + suggestion[:1].lower() + suggestion[1:]
      return message
    lookup = re.search(r"Attempting to lookup: ([\w.]+)", text)
    if lookup:
      return f"{_override_naming(lookup.group(1).split('.')[-1], argv)}: {' '.join(text.split())}"
  if isinstance(e, flags.Error):
    text = str(e)
    if "Error whilst parsing config file" in text:  # a config file raised; its traceback inside
      name = next(iter(_config_flag_names()), "config")
      return f"--{name}={_flag_argument(name, argv)} failed: {_last_line(text)}"
    typed = re.fullmatch(r"flag --(\w+)\.([\w.]+)=(.*?): (.*)", " ".join(text.split()))
    if typed:  # a config override of the wrong type
      name, key, value, reason = typed.groups()
      for fragment, kind in _TYPE_ERRORS:
        if fragment in reason:
          return f"--{name}.{key}={value}: {key} must be {kind}"
    return " ".join(text.split())
  if isinstance(e, ModuleNotFoundError) and str(e.name).split(".")[0] == "configs":
    name = next(iter(_config_flag_names()), "config")
    return (f"--{name}={_flag_argument(name, argv)} imports {e.name}, which is found from the "
            "repository's root: run the command from there (configs that build on others, such "
            "as configs/demo_guided.py and configs/study/*.py, import configs/*.py)")
  return f"{type(e).__name__}: {_last_line(str(e))}"


# How Python's conversions say that a value is not of the field's type.
_TYPE_ERRORS = (("invalid literal for int()", "an integer"),
                ("could not convert string to float", "a number"),
                ("Non-boolean argument", "True or False"))


def _flag_argument(name: str, argv: list[str]) -> str:
  """The value last given to --name (as --name=value or --name value), or ""."""
  value = ""
  for number, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and number + 1 < len(argv):
      value = argv[number + 1]
  return value


def _override_naming(key: str, argv: list[str]) -> str:
  """The --config.a.b=value argument whose path contains `key` (or the key itself)."""
  for name in _config_flag_names():
    for arg in argv:
      match = re.match(rf"--{re.escape(name)}\.([\w.]+)", arg)
      if match and key in match.group(1).split("."):
        return arg
  return key


def _missing_key(text: str) -> tuple[str, str | None] | None:
  """(key, suggestion) of ml_collections' "'key'\nDid you mean ..." (repr'ed again on the way)."""
  for _ in range(3):
    match = re.fullmatch(r"'([^'\n]*)'(?:\n(.*))?", text, re.S)
    if match:
      return match.group(1), match.group(2)
    try:
      text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return None
    if not isinstance(text, str):
      return None
  return None


def _last_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else ""


# Logging -------------------------------------------------------------------------

def _is_own(record: logging.LogRecord) -> bool:
  """neft_jax's loggers; "__main__" is the neft_jax program itself (python -m neft_jax.train)."""
  return record.name.split(".")[0] in ("neft_jax", "__main__")


class _Console(logging.Handler):
  """neft_jax's INFO lines and everyone's warnings, written around a tqdm progress bar."""

  def filter(self, record: logging.LogRecord) -> bool:
    if getattr(record, _FILE_ONLY, False):
      return False
    if any(record.name == name and str(record.msg).startswith(start)
           for name, start in _EXPECTED_WARNINGS):
      return False
    return record.levelno >= logging.WARNING or _is_own(record)

  def emit(self, record: logging.LogRecord) -> None:
    try:
      text = record.getMessage().rstrip()
      if record.levelno >= logging.WARNING:
        source = "" if _is_own(record) else f" [{record.name}]"
        text = f"{record.levelname.lower()}{source}: {text}"
      tqdm.write(text, file=sys.stderr)
    except Exception:  # noqa: BLE001  (as logging.StreamHandler does)
      self.handleError(record)


class _RunLog(logging.Handler):
  """Every record, into `path` once its folder exists; kept in memory until then."""

  def __init__(self, max_waiting: int = 10_000):
    super().__init__(logging.INFO)
    self.setFormatter(logging.Formatter(LOG_FORMAT))
    self.path: str | None = None
    self.max_waiting = max_waiting
    self._waiting: list[str] = []
    self._file = None

  def _open(self) -> bool:
    if self._file is None and self.path:
      path = epath.Path(self.path)
      if path.parent.exists():  # a bucket's objects cannot be appended to: a new log there
        self._file = path.open("w" if "://" in self.path else "a")
        self._file.writelines(self._waiting)
        self._waiting = []
    return self._file is not None

  def emit(self, record: logging.LogRecord) -> None:
    try:
      line = self.format(record) + "\n"
      if self._open():
        self._file.write(line)
        self._file.flush()
      elif len(self._waiting) < self.max_waiting:
        self._waiting.append(line)
    except Exception:  # noqa: BLE001
      self.handleError(record)

  def close(self) -> None:
    try:
      if self._open():
        self._file.close()
    except OSError:
      pass  # the folder went away: nothing to keep
    self._file, self._waiting = None, []
    super().close()


_run_log: _RunLog | None = None


@contextlib.contextmanager
def routed_logging():
  """The console and the run log in place of absl's stderr handler, for the `with` block."""
  global _run_log
  root = logging.getLogger()
  saved_handlers, saved_level = root.handlers[:], root.level
  for handler in saved_handlers:  # absl's, and any other that writes to the terminal
    if (handler is absl_logging.get_absl_handler()
        or getattr(handler, "stream", None) in (sys.stderr, sys.stdout)):
      root.removeHandler(handler)
  console, _run_log = _Console(), _RunLog()
  root.addHandler(console)
  root.addHandler(_run_log)
  root.setLevel(logging.INFO)
  logging.captureWarnings(True)  # Python warnings through the same handlers
  try:
    yield _run_log
  finally:
    logging.captureWarnings(False)
    root.removeHandler(console)
    root.removeHandler(_run_log)
    _run_log.close()
    _run_log = None
    for handler in saved_handlers:
      if handler not in root.handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)


def _run_main(main: Callable[[flags.FlagValues], object]) -> None:
  with routed_logging(), one_line_errors():
    try:
      main(flags.FLAGS)
    except UserError as e:
      _logger.error("error: %s", e, extra={_FILE_ONLY: True})
      raise
    except Exception:
      _logger.exception("stopped by an unexpected error", extra={_FILE_ONLY: True})
      raise
