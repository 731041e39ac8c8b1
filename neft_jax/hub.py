"""Hugging Face hub ids: which paths that do not exist locally are tried on the hub."""

from __future__ import annotations

import re

_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def is_hub_id(path: str) -> bool:
  """True for `name` or `owner/name` (letters, digits, `_`, `.`, `-`), as hub repos are named."""
  return bool(_HUB_ID.match(path))
