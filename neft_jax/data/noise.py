"""Controlled data noise: seeded label, typographical and grammatical corruption of records.

    corrupt(records, kind=..., rate=..., seed=..., fields=(), labels=(), label_noise=...,
            typo_ops=..., grammar_ops=...) -> (noisy_records, manifest, realized)
    apply_manifest(records, manifest) -> noisy_records     the same noisy records again
    write_manifest(path, manifest), read_manifest(path)     one JSON object a line

Records are `sources.Record`s or mappings (rows of a file, classification
records with `text` and `label`); the noisy ones are new objects of the same
type, and a record that is not changed is returned as it is. The kinds:

  * `label`: exactly round(rate * N) records (halves round up), chosen by a
    seeded permutation, get another label of the declared set `labels`:
    `label_noise="symmetric"` draws it uniformly from the other labels, "pair"
    maps labels[k] to labels[k + 1] (the last to the first). A label is one of
    `labels` or an integer index into them, and stays of its type.
  * `typo`: every word of two or more letters (a run of letters in a
    whitespace token without digits) is hit with probability `rate` and gets
    one operation of `typo_ops`, chosen uniformly among those that apply:
    insert a QWERTY neighbour of the letter before, delete a letter,
    substitute a QWERTY neighbour, swap two adjacent different letters. Case
    is kept; one-letter words, numbers and punctuation are left alone.
  * `grammar`: see `neft_jax.data.grammar` (articles, prepositions,
    agreement, verb forms, adjacent-word swaps, common confusions).

`fields` default to the label field (`label` where records have one, else
`output`) for label noise and the input text (`input`, else `text`) for the
others. The manifest has one entry per changed field of a record: index,
field, before, after and the operations. Everything is drawn from one
`random.Random` seeded by the kind and `seed`, so the same call gives the same
changes on any machine and Python version, and another seed other changes.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import random
import re
from typing import Any, Sequence

from neft_jax.data import grammar
from neft_jax.errors import UserError

KINDS = ("label", "typo", "grammar")
LABEL_NOISE = ("symmetric", "pair")
TYPO_OPS = ("insert", "delete", "substitute", "swap")
GRAMMAR_OPS = grammar.OPS

_KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
  """Each letter's neighbours on a staggered QWERTY keyboard (same row, and the
  two touching keys in the rows above and below)."""
  place = {key: (row, col) for row, keys in enumerate(_KEY_ROWS) for col, key in enumerate(keys)}
  neighbours = {}
  for key, (row, col) in place.items():
    near = [(row, col - 1), (row, col + 1), (row - 1, col), (row - 1, col + 1),
            (row + 1, col - 1), (row + 1, col)]
    neighbours[key] = "".join(_KEY_ROWS[r][c] for r, c in near
                              if 0 <= r < len(_KEY_ROWS) and 0 <= c < len(_KEY_ROWS[r]))
  return neighbours


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()

_DIGIT = re.compile(r"\d")
_NUMBER_TOKEN = re.compile(r"\S*\d\S*")
_LETTERS = re.compile(r"[^\W\d_]{2,}")


@dataclasses.dataclass(frozen=True)
class Realized:
  """What a corruption changed: records and words (labels, for label noise)."""
  records_changed: int
  records_eligible: int
  words_changed: int
  words_eligible: int

  @property
  def record_rate(self) -> float:
    return self.records_changed / self.records_eligible if self.records_eligible else 0.0

  @property
  def word_rate(self) -> float:
    return self.words_changed / self.words_eligible if self.words_eligible else 0.0

  def as_dict(self) -> dict[str, float]:
    return {**dataclasses.asdict(self), "record_rate": self.record_rate,
            "word_rate": self.word_rate}

  def summary(self) -> str:
    return (f"{self.records_changed:,} of {self.records_eligible:,} records "
            f"({self.record_rate:.4f}) and {self.words_changed:,} of {self.words_eligible:,} "
            f"words ({self.word_rate:.4f}) changed")


# Records ---------------------------------------------------------------------------

_MISSING = object()


def _value(record, field: str):
  if isinstance(record, collections.abc.Mapping):
    return record.get(field, _MISSING)
  return getattr(record, field, _MISSING)


def _replaced(record, changes: dict[str, Any]):
  if isinstance(record, collections.abc.Mapping):
    return {**record, **changes}
  return dataclasses.replace(record, **changes)


def _field_names(records: Sequence) -> set[str]:
  """Every field of any record (the dataclass's fields for Records)."""
  names: set[str] = set()
  for number, record in enumerate(records):
    if isinstance(record, collections.abc.Mapping):
      names.update(record)
    elif dataclasses.is_dataclass(record) and not isinstance(record, type):
      names.update(f.name for f in dataclasses.fields(record))
    else:
      raise UserError(f"record {number} (counting from 0) is a {type(record).__name__}; noise "
                      "takes records as mappings (rows of a file) or neft_jax Records")
  return names


def default_fields(kind: str, records: Sequence) -> tuple[str, ...]:
  """The label field for label noise, the input text for typo and grammar noise."""
  names = _field_names(records)
  if kind == "label":
    return ("label",) if "label" in names else ("output",)
  for name in ("input", "text"):
    if name in names:
      return (name,)
  raise UserError(f"the records have no 'input' or 'text' field (they have {sorted(names)}); "
                  "name the text to corrupt with fields (--fields=output, say)")


# Checks ----------------------------------------------------------------------------

def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
  if value not in choices:
    raise UserError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")


def _check_ops(ops, choices: tuple[str, ...], key: str) -> tuple[str, ...]:
  ops = (ops,) if isinstance(ops, str) else tuple(ops)
  if not ops:
    raise UserError(f"{key} is empty; choose one or more of {', '.join(choices)}")
  for op in ops:
    if op not in choices:
      raise UserError(f"{key}: unknown operation {op!r}; choose from {', '.join(choices)}")
  return tuple(dict.fromkeys(ops))


def _check_arguments(kind, rate, seed, label_noise, typo_ops, grammar_ops):
  """The arguments that do not depend on the records; returns the operations as tuples."""
  if not isinstance(kind, str):
    raise UserError(f"kind={kind!r} is not one of {', '.join(map(repr, KINDS))}")
  _check_choice(kind, KINDS, "kind")
  if (isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate)
      or not 0.0 <= rate <= 1.0):
    raise UserError(f"rate={rate!r} is outside [0, 1]; give the fraction of records (label "
                    "noise) or of words (typo, grammar) to corrupt, e.g. 0.1")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise UserError(f"seed={seed!r} is not an integer")
  _check_choice(label_noise, LABEL_NOISE, "label_noise")
  return _check_ops(typo_ops, TYPO_OPS, "typo_ops"), _check_ops(grammar_ops, GRAMMAR_OPS,
                                                                "grammar_ops")


def _check_fields(records, kind, fields, labels) -> tuple[tuple[str, ...], tuple]:
  """The fields to corrupt (named, or the defaults) and the label set, checked."""
  fields = (fields,) if isinstance(fields, str) else tuple(dict.fromkeys(fields))
  if not fields:
    fields = default_fields(kind, records)
  names = _field_names(records)
  for field in fields:
    if field not in names:
      raise UserError(f"fields: the records have no field {field!r}; they have "
                      f"{', '.join(sorted(names))}")
  labels = tuple(labels)
  if kind == "label":
    if len(fields) != 1:
      raise UserError(f"fields={list(fields)}: label noise changes one label field; name one")
    if len(labels) < 2:
      got = f"; got only {labels[0]!r}" if labels else ""
      raise UserError("label noise needs the label set: declare two or more labels (labels=, "
                      f"--labels=negative,positive){got}")
    if len(set(labels)) != len(labels):
      raise UserError(f"labels={list(labels)} names a label twice; list each label once")
  return fields, labels


def _label_index(value, labels: tuple, number: int, field: str) -> int:
  if isinstance(value, int) and not isinstance(value, bool):
    if not 0 <= value < len(labels):
      raise UserError(f"record {number} (counting from 0): label {field!r} = {value} is out of "
                      f"range for the {len(labels)} labels {list(labels)}; integer labels index "
                      "into the label set")
    return value
  if value in labels:
    return labels.index(value)
  what = "has no" if value is _MISSING or value is None else f"has {value!r} as its"
  raise UserError(f"record {number} (counting from 0) {what} label {field!r}, which is not in "
                  f"the label set {list(labels)}; add it to labels or fix the record")


# The kinds -------------------------------------------------------------------------

def _corrupt_labels(records, field, labels, rate, label_noise, rng):
  indices = [_label_index(_value(r, field), labels, number, field)
             for number, r in enumerate(records)]
  count = math.floor(rate * len(records) + 0.5)
  order = list(range(len(records)))
  rng.shuffle(order)
  changes = {}
  for number in sorted(order[:count]):
    old = indices[number]
    if label_noise == "pair":
      new = (old + 1) % len(labels)
    else:
      new = rng.randrange(len(labels) - 1)
      new += new >= old  # uniform over the other labels
    before = _value(records[number], field)
    after = new if isinstance(before, int) else labels[new]
    changes[number] = {field: (after, [{"op": label_noise, "before": before, "after": after}])}
  return changes, Realized(len(changes), len(records), len(changes), len(records))


def typo_word(word: str, op: str, rng: random.Random) -> str | None:
  """`word` with one typo of kind `op`, case kept; None where `op` cannot apply."""
  lower = word.lower()
  keyboard = lower.isascii()  # every letter is a key (words are letters only)
  if op == "insert":  # a key next to the one just typed
    places = (range(1, len(word) + 1) if keyboard else
              [p for p in range(1, len(word) + 1) if lower[p - 1] in KEYBOARD_NEIGHBOURS])
    if not places:
      return None
    p = grammar.pick(places, rng)
    letter = grammar.pick(KEYBOARD_NEIGHBOURS[lower[p - 1]], rng)
    return word[:p] + (letter.upper() if word.isupper() else letter) + word[p:]
  if op == "delete":
    p = int(rng.random() * len(word))
    rest = word[:p] + word[p + 1:]
    return grammar.cased(rest, word) if p == 0 and not word.isupper() else rest
  if op == "substitute":
    places = (range(len(word)) if keyboard else
              [p for p in range(len(word)) if lower[p] in KEYBOARD_NEIGHBOURS])
    if not places:
      return None
    p = grammar.pick(places, rng)
    letter = grammar.pick(KEYBOARD_NEIGHBOURS[lower[p]], rng)
    return word[:p] + (letter.upper() if word[p].isupper() else letter) + word[p + 1:]
  places = [p for p in range(len(word) - 1) if lower[p] != lower[p + 1]]  # swap
  if not places:
    return None
  p = grammar.pick(places, rng)
  first = word[p + 1].upper() if word[p].isupper() else word[p + 1].lower()
  second = word[p].upper() if word[p + 1].isupper() else word[p].lower()
  return word[:p] + first + second + word[p + 2:]


def _typo_words(text: str, ops: tuple[str, ...]) -> list[re.Match]:
  """The words a typo may hit: letter runs of two or more outside tokens with digits."""
  words = _LETTERS.finditer(text)
  if _DIGIT.search(text):
    numbers = [token.span() for token in _NUMBER_TOKEN.finditer(text)]
    words = (w for w in words if not any(a <= w.start() < b for a, b in numbers))
  if "delete" in ops:  # applies to every word
    return list(words)
  return [w for w in words if any(_applies(w.group().lower(), op) for op in ops)]


def _typo_text(text: str, rate: float, ops: tuple[str, ...], rng: random.Random):
  words = _typo_words(text, ops)
  hits = [number for number in range(len(words)) if rng.random() < rate]
  pieces, operations, position = [], [], 0
  for number in hits:
    word = words[number].group()
    op = grammar.pick(ops, rng)
    after = typo_word(word, op, rng)
    if after is None:  # another in a random order: a uniform choice among those that apply
      for op in _shuffled(tuple(o for o in ops if o != op), rng):
        after = typo_word(word, op, rng)
        if after is not None:
          break
    if after is not None:
      pieces += [text[position:words[number].start()], after]
      position = words[number].end()
      operations.append({"op": op, "word": number, "before": word, "after": after})
  if not operations:
    return text, [], len(words), 0
  return "".join(pieces) + text[position:], operations, len(words), len(operations)


def _applies(lower: str, op: str) -> bool:
  if op in ("insert", "substitute"):
    return any(c in KEYBOARD_NEIGHBOURS for c in lower)
  if op == "swap":
    return any(a != b for a, b in zip(lower, lower[1:]))
  return True


def _shuffled(ops: tuple[str, ...], rng: random.Random) -> list[str]:
  """The operations in a random order."""
  if len(ops) == 1:
    return list(ops)
  order = list(ops)
  rng.shuffle(order)
  return order


def _corrupt_texts(records, fields, rate, edit, rng):
  changes = {}
  records_eligible = words_eligible = words_changed = 0
  for number, record in enumerate(records):
    record_eligible = False
    for field in fields:
      text = _value(record, field)
      if text is _MISSING or text is None:
        continue
      if not isinstance(text, str):
        raise UserError(f"record {number} (counting from 0): field {field!r} holds a "
                        f"{type(text).__name__}, not text; name text fields only")
      after, operations, eligible, changed = edit(text, rate, rng)
      record_eligible |= eligible > 0
      words_eligible += eligible
      words_changed += changed
      if operations:
        changes.setdefault(number, {})[field] = (after, operations)
    records_eligible += record_eligible
  return changes, Realized(len(changes), records_eligible, words_changed, words_eligible)


def corrupt(records: Sequence, *, kind: str, rate: float, seed: int = 0,
            fields: Sequence[str] | str = (), labels: Sequence = (),
            label_noise: str = "symmetric", typo_ops: Sequence[str] = TYPO_OPS,
            grammar_ops: Sequence[str] = GRAMMAR_OPS) -> tuple[list, list[dict], Realized]:
  """The records with noise of `kind`, the manifest of changes, and the realized rates.

  Every argument is checked before anything is drawn: a mistake is a UserError
  that names the argument, the record or the field.
  """
  typo_ops, grammar_ops = _check_arguments(kind, rate, seed, label_noise, typo_ops, grammar_ops)
  records = list(records)
  if not records:
    return [], [], Realized(0, 0, 0, 0)
  fields, labels = _check_fields(records, kind, fields, labels)
  rng = random.Random(f"neft_jax.noise:{kind}:{seed}")
  if kind == "label":
    changes, realized = _corrupt_labels(records, fields[0], labels, rate, label_noise, rng)
  elif kind == "typo":
    changes, realized = _corrupt_texts(
        records, fields, rate, lambda text, r, g: _typo_text(text, r, typo_ops, g), rng)
  else:
    changes, realized = _corrupt_texts(
        records, fields, rate, lambda text, r, g: grammar.edit_text(text, r, grammar_ops, g), rng)
  noisy = list(records)
  manifest = []
  for number in sorted(changes):
    noisy[number] = _replaced(records[number],
                              {field: after for field, (after, _) in changes[number].items()})
    for field, (after, operations) in changes[number].items():
      manifest.append({"index": number, "field": field, "before": _value(records[number], field),
                       "after": after, "operations": operations})
  return noisy, manifest, realized


# The manifest ----------------------------------------------------------------------

def apply_manifest(records: Sequence, manifest: Sequence[dict]) -> list:
  """The noisy records again: the clean ones with every manifest entry applied.

  Each entry's `before` must be the clean record's value, so a manifest applied
  to other data is a UserError naming the entry, the record and the field.
  """
  noisy = list(records)
  changes: dict[int, dict[str, Any]] = {}
  for line, entry in enumerate(manifest, start=1):
    try:
      index, field, before, after = (entry["index"], entry["field"], entry["before"],
                                     entry["after"])
    except (KeyError, TypeError):
      raise UserError(f"manifest line {line} is not an entry with index, field, before and "
                      "after") from None
    if not isinstance(index, int) or not 0 <= index < len(noisy):
      raise UserError(f"manifest line {line}: record {index!r} is not among the "
                      f"{len(noisy):,} records; apply the manifest to the data it was made from")
    value = _value(noisy[index], field)
    if value is _MISSING or value != before or type(value) is not type(before):
      raise UserError(f"manifest line {line}: record {index} (counting from 0) field {field!r} "
                      "is not the manifest's 'before'; apply the manifest to the clean data it "
                      "was made from")
    changes.setdefault(index, {})[field] = after
  for index, fields in changes.items():
    noisy[index] = _replaced(noisy[index], fields)
  return noisy


def write_manifest(path: str, manifest: Sequence[dict]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for entry in manifest:
      f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def read_manifest(path: str) -> list[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise UserError(f"{path}: the manifest cannot be read ({e.strerror})") from None
  entries = []
  for number, line in enumerate(lines, start=1):
    if line.strip():
      try:
        entries.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON on line {number} column {e.colno}: "
                        f"{e.msg}") from None
  return entries
