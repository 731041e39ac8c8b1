"""Grammatical errors of the kinds error-correction corpora annotate, made by rule.

    edit_text(text, rate, ops, rng) -> (new_text, operations, words_eligible, words_changed)

A word is a run of ASCII letters, with inner apostrophes ("it's", "doesn't").
Each word that at least one chosen operation applies to is eligible, and is
hit with probability `rate`; a hit applies one of its operations, chosen
uniformly:

    article      drop a / an / the, or put another of them in its place
    preposition  one preposition for another (in, on, at, of, for, to, ...)
    agreement    is/are, was/were, has/have, does/do (and their n't forms),
                 third-person -s after a pronoun ("he likes" -> "he like",
                 "they like" -> "they likes")
    verb_form    another form of the same verb: "went" -> "gone", "taken" ->
                 "took", "can go" -> "can going"
    word_swap    the word exchanged with a neighbour: the next or the one before,
                 one not hit itself if there is one (else a hit neighbour gives
                 its hit to the swap, which then counts as two errors)
    confusion    its/it's, their/there/they're, then/than, your/you're,
                 whose/who's, lose/loose

The word lists are this module's own. A replacement takes the case of the word
it replaces (capitalized or all upper). Every operation is recorded as a dict:
op, edit, word (its position among the text's words), before and after.
"""

from __future__ import annotations

import functools
import random
import re

OPS = ("article", "preposition", "agreement", "verb_form", "word_swap", "confusion")

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_SPLIT = re.compile(f"({WORD.pattern})")

ARTICLES = ("a", "an", "the")

PREPOSITIONS = ("in", "on", "at", "of", "for", "to", "with", "by", "from", "about", "into",
                "over", "under", "through", "during", "toward", "towards", "onto", "upon")

# Each word and the one it is flipped to (both ways).
_AGREEMENT_PAIRS = (("is", "are"), ("was", "were"), ("has", "have"), ("does", "do"),
                    ("isn't", "aren't"), ("wasn't", "weren't"), ("hasn't", "haven't"),
                    ("doesn't", "don't"))
AGREEMENT = {**{a: b for a, b in _AGREEMENT_PAIRS}, **{b: a for a, b in _AGREEMENT_PAIRS}}

THIRD_PERSON_SUBJECTS = ("he", "she", "it", "this", "that", "everyone", "nobody", "somebody")
PLURAL_SUBJECTS = ("i", "you", "we", "they")

CONFUSIONS = {
    "its": ("it's",), "it's": ("its",),
    "their": ("there", "they're"), "there": ("their", "they're"), "they're": ("their", "there"),
    "then": ("than",), "than": ("then",),
    "your": ("you're",), "you're": ("your",),
    "whose": ("who's",), "who's": ("whose",),
    "lose": ("loose",), "loose": ("lose",),
}

MODALS = ("can", "could", "will", "would", "shall", "should", "may", "might", "must", "to",
          "cannot", "can't", "won't", "wouldn't", "couldn't", "shouldn't", "didn't", "don't",
          "doesn't", "did")

# Irregular verbs: base, past, past participle.
_IRREGULAR = """
be was been; begin began begun; break broke broken; bring brought brought; build built built;
buy bought bought; catch caught caught; choose chose chosen; come came come; do did done;
draw drew drawn; drink drank drunk; drive drove driven; eat ate eaten; fall fell fallen;
feel felt felt; fight fought fought; find found found; fly flew flown; forget forgot forgotten;
get got gotten; give gave given; go went gone; grow grew grown; have had had; hear heard heard;
hide hid hidden; hold held held; keep kept kept; know knew known; leave left left; lose lost lost;
make made made; mean meant meant; meet met met; pay paid paid; ride rode ridden; ring rang rung;
rise rose risen; run ran run; say said said; see saw seen; sell sold sold; send sent sent;
shake shook shaken; shine shone shone; sing sang sung; sink sank sunk; sit sat sat;
sleep slept slept; speak spoke spoken; spend spent spent; stand stood stood; steal stole stolen;
swim swam swum; take took taken; teach taught taught; tell told told; think thought thought;
throw threw thrown; understand understood understood; wake woke woken; wear wore worn;
win won won; write wrote written
"""
# Regular verbs, by their base form.
_REGULAR = """
act add admire allow annoy appear ask attempt bore call care change charm cheat climb look
deliver depend deserve destroy develop die disappoint dislike earn end enjoy entertain
expect explain explore fail fill finish follow help hate hope hurry impress intend
interest irritate jump kill kiss laugh learn like listen live love manage marry miss move
need offer open paint pass perform pick plan play please prefer pretend promise pull
push reach realize remember remind return save scare seem shock show smile start stay
stop study succeed suffer surprise talk touch travel try turn use visit wait walk want
watch wish wonder work worry
"""


def _third_person(base: str) -> str:
  if base == "be":
    return "is"
  if base == "have":
    return "has"
  if base.endswith("y") and base[-2:-1] not in "aeiou":
    return base[:-1] + "ies"
  if base.endswith(("s", "sh", "ch", "x", "z", "o")):
    return base + "es"
  return base + "s"


def _past(base: str) -> str:
  if base.endswith("e"):
    return base + "d"
  if base.endswith("y") and base[-2:-1] not in "aeiou":
    return base[:-1] + "ied"
  if base in ("stop", "plan", "travel", "admit"):
    return base + base[-1] + "ed"
  return base + "ed"


def _ing(base: str) -> str:
  if base == "be":
    return "being"
  if base.endswith("ie"):
    return base[:-2] + "ying"
  if base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
    return base[:-1] + "ing"
  if base in ("stop", "plan", "travel", "admit", "run", "swim", "sit", "win", "begin", "get",
              "forget"):
    return base + base[-1] + "ing"
  return base + "ing"


def _verb_tables() -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]],
                            dict[str, str]]:
  """(inflected form -> other forms, base -> its non-base forms, base -> third person)."""
  forms_of = {}
  for entry in _IRREGULAR.split(";"):
    base, past, participle = entry.split()
    forms_of[base] = (base, past, participle, _ing(base))
  for base in _REGULAR.split():
    forms_of[base] = (base, _past(base), _past(base), _ing(base))
  other_forms, base_forms, third = {}, {}, {}
  for base, forms in forms_of.items():
    distinct = tuple(dict.fromkeys(forms))
    for form in distinct[1:]:
      if form != base and form not in AGREEMENT:
        other_forms.setdefault(form, tuple(f for f in distinct if f != form))
    base_forms[base] = tuple(f for f in distinct if f != base)
    if base not in ("be", "have", "do"):  # their agreement forms are in AGREEMENT
      third[base] = _third_person(base)
  return other_forms, base_forms, third


VERB_FORMS, BASE_VERB_FORMS, THIRD_PERSON = _verb_tables()
BASE_OF_THIRD_PERSON = {s: base for base, s in THIRD_PERSON.items()}


def pick(sequence, rng: random.Random):
  """One element, uniformly (to 2^-53): random() is the one draw, faster than randrange."""
  return sequence[int(rng.random() * len(sequence))]


def cased(word: str, like: str) -> str:
  """`word` in the case of `like`: all upper, capitalized, or as it is."""
  if len(like) > 1 and like.isupper():
    return word.upper()
  if like[:1].isupper():
    return word[:1].upper() + word[1:]
  return word


@functools.lru_cache(maxsize=None)
def _triggers(ops: tuple[str, ...]) -> frozenset[str]:
  """The words that an operation of `ops` other than word_swap may apply to."""
  words: set[str] = set()
  if "article" in ops:
    words.update(ARTICLES)
  if "preposition" in ops:
    words.update(PREPOSITIONS)
  if "agreement" in ops:
    words.update(AGREEMENT, BASE_OF_THIRD_PERSON, THIRD_PERSON)
  if "verb_form" in ops:
    words.update(VERB_FORMS, BASE_VERB_FORMS)
  if "confusion" in ops:
    words.update(CONFUSIONS)
  return frozenset(words)


def _options(word: str, previous: str, ops: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
  """The replacements each operation but word_swap may put for `word` ("" drops it)."""
  options = {}
  if "article" in ops and word in ARTICLES:
    options["article"] = ("",) + tuple(a for a in ARTICLES if a != word)
  if "preposition" in ops and word in PREPOSITIONS:
    options["preposition"] = tuple(p for p in PREPOSITIONS if p != word)
  if "agreement" in ops:
    if word in AGREEMENT:
      options["agreement"] = (AGREEMENT[word],)
    elif previous in THIRD_PERSON_SUBJECTS and word in BASE_OF_THIRD_PERSON:
      options["agreement"] = (BASE_OF_THIRD_PERSON[word],)
    elif previous in PLURAL_SUBJECTS and word in THIRD_PERSON:
      options["agreement"] = (THIRD_PERSON[word],)
  if "verb_form" in ops:
    if word in VERB_FORMS:
      options["verb_form"] = VERB_FORMS[word]
    elif previous in MODALS and word in BASE_VERB_FORMS:
      options["verb_form"] = BASE_VERB_FORMS[word]
  if "confusion" in ops and word in CONFUSIONS:
    options["confusion"] = CONFUSIONS[word]
  return options


def edit_text(text: str, rate: float, ops: tuple[str, ...],
              rng: random.Random) -> tuple[str, list[dict], int, int]:
  """The text with grammatical errors, the operations, and words eligible and changed."""
  parts = _SPLIT.split(text)  # [separator, word, separator, ..., word, separator]
  if len(parts) == 1:
    return text, [], 0, 0
  words, separators = parts[1::2], parts[0::2]
  lower = [w.lower() for w in words]
  count = len(words)
  # joined[i]: only whitespace between words i - 1 and i (the first and the end: never).
  joined = [False] + [separators[i].isspace() for i in range(1, count)] + [False]
  swappable = [joined[i] and lower[i - 1] != lower[i] for i in range(count)] + [False]
  swaps, triggers = "word_swap" in ops, _triggers(ops)
  eligible = [i for i in range(count)
              if (swaps and (swappable[i] or swappable[i + 1]))
              or (lower[i] in triggers
                  and _options(lower[i], lower[i - 1] if joined[i] else "", ops))]
  hits = [i for i in eligible if rng.random() < rate]
  hit = set(hits)
  new_words = list(words)
  touched: set[int] = set()
  operations, changed = [], 0
  for i in hits:
    if i in touched:
      continue
    options = (_options(lower[i], lower[i - 1] if joined[i] else "", ops)
               if lower[i] in triggers else {})
    if swaps:
      # A neighbour not hit itself first; a hit one gives its hit to the swap (2 errors).
      partners = [j for j, can in ((i + 1, swappable[i + 1]), (i - 1, swappable[i]))
                  if can and j not in touched]
      if len(partners) == 2 and partners[0] in hit and partners[1] not in hit:
        partners.reverse()
      if partners:
        options["word_swap"] = ()
    if not options:
      continue
    op = pick(list(options), rng)
    if op == "word_swap":
      j = partners[0]
      new_words[i], new_words[j] = words[j], words[i]
      touched.update((i, j))
      first, second = min(i, j), max(i, j)
      operations.append({"op": op, "edit": "swap", "word": i, "with": j,
                         "before": f"{words[first]} {words[second]}",
                         "after": f"{words[second]} {words[first]}"})
      changed += 1 + (j in hit)
      continue
    choices = options[op]
    replacement = pick(choices, rng)
    new_words[i] = cased(replacement, words[i]) if replacement else ""
    touched.add(i)
    operations.append({"op": op, "edit": "substitute" if replacement else "drop", "word": i,
                       "before": words[i], "after": new_words[i]})
    changed += 1
  if not operations:
    return text, [], len(eligible), 0
  dropped = [o["word"] for o in operations if o["edit"] == "drop"]
  return _join(parts, new_words, dropped), operations, len(eligible), changed


def _join(parts: list[str], words: list[str], dropped: list[int]) -> str:
  """The split text with its new words; a dropped word takes one space with it."""
  parts = list(parts)
  parts[1::2] = words
  for i in dropped:  # the separators before and after word i are parts[2i] and parts[2i + 2]
    if parts[2 * i + 2][:1].isspace():  # "saw the film" -> "saw film"
      parts[2 * i + 2] = parts[2 * i + 2][1:]
    elif parts[2 * i][-1:].isspace():  # "saw the." -> "saw."
      parts[2 * i] = parts[2 * i][:-1]
  return "".join(parts)
