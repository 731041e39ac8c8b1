"""The command lines are leaves: no module of the package imports them."""

import pkgutil
import subprocess
import sys

import neft_jax

COMMAND_LINES = {"neft_jax.train", "neft_jax.evaluate", "neft_jax.export", "neft_jax.fisher",
                 "neft_jax.data.corrupt", "neft_jax.analyze"}


def test_no_module_imports_a_command_line():
  modules = sorted(m.name for m in pkgutil.walk_packages(neft_jax.__path__, "neft_jax.")
                   if m.name not in COMMAND_LINES)
  assert "neft_jax.run" in modules and "neft_jax.answers" in modules
  program = ("import importlib, sys\n"
             f"for name in {modules!r}: importlib.import_module(name)\n"
             f"print(sorted(set(sys.modules) & {COMMAND_LINES!r}))")
  result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=300, check=True)
  assert result.stdout.strip() == "[]", result.stdout
