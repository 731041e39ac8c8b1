"""The original rt-polarity release: a folder with `rt-polarity.pos` and `rt-polarity.neg`.

Pang & Lee's sentence polarity dataset v1.0 (Rotten Tomatoes snippets): one
lower-cased, tokenized sentence a line, 5,331 of each polarity. Copies of it
are UTF-8; Cornell's own release is latin-1, read as such where a file is not
UTF-8.
"""

from __future__ import annotations

import os

from neft_jax.errors import UserError

LABELS = ("negative", "positive")
FILES = {"negative": "rt-polarity.neg", "positive": "rt-polarity.pos"}


def is_rt_polarity(path: str) -> bool:
  return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in FILES.values())


def _lines(file: str) -> list[str]:
  with open(file, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    text = data.decode("latin-1")
  return [line.strip() for line in text.splitlines() if line.strip()]


def load_rt_polarity(folder: str) -> list[dict[str, str]]:
  """Records {"text", "label"}: the negative sentences, then the positive ones, in file order."""
  if not is_rt_polarity(folder):
    raise UserError(f"{folder} is not an rt-polarity folder: it needs the files "
                    f"{' and '.join(FILES.values())}")
  return [{"text": line, "label": label}
          for label in LABELS for line in _lines(os.path.join(folder, FILES[label]))]
