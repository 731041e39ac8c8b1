"""Controlled data noise (neft_jax.data.noise, grammar, corrupt): counts, kinds, seeds, manifest."""

import collections
import json
import math
import os
import subprocess
import sys

import pytest
from scipy import stats

from neft_jax.data import corrupt, noise, rt_polarity
from neft_jax.data.sources import Record
from neft_jax.errors import UserError
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def sentences():
  """The 10,662 rt-polarity sentences as {"text", "label"} records."""
  return rt_polarity.load_rt_polarity(shared_data("sentiment"))


def test_the_rt_polarity_folder_reads_as_text_and_label_records(sentences, tmp_path):
  assert len(sentences) == 10_662
  assert collections.Counter(r["label"] for r in sentences) == {"negative": 5331, "positive": 5331}
  assert sentences[0]["text"] == "simplistic , silly and tedious ."  # stripped, UTF-8
  assert any("é" in r["text"] for r in sentences)
  (tmp_path / "rt-polarity.pos").write_bytes("caf\xe9 society \n".encode("latin-1"))
  (tmp_path / "rt-polarity.neg").write_bytes(b"dull\n\n")
  assert rt_polarity.load_rt_polarity(str(tmp_path)) == [
      {"text": "dull", "label": "negative"}, {"text": "caf\xe9 society", "label": "positive"}]
  with pytest.raises(UserError, match="needs the files rt-polarity.neg and rt-polarity.pos"):
    rt_polarity.load_rt_polarity(str(tmp_path / "nowhere"))


def _labelled(count, labels):
  return [{"text": f"sentence {i}", "label": labels[i % len(labels)]} for i in range(count)]


# Label noise ---------------------------------------------------------------------

@pytest.mark.parametrize("count,rate,expected", [(101, 0.25, 25), (5, 0.5, 3), (40, 1.0, 40),
                                                 (40, 0.0, 0)])
def test_label_noise_flips_exactly_round_rate_n_records_to_other_labels(count, rate, expected):
  labels = ("negative", "neutral", "positive")
  clean = _labelled(count, labels)
  noisy, manifest, realized = noise.corrupt(clean, kind="label", rate=rate, seed=3, labels=labels)
  changed = [i for i in range(count) if noisy[i] != clean[i]]
  assert len(changed) == expected == realized.records_changed == len(manifest)
  assert realized.records_eligible == count
  for i in changed:
    assert noisy[i]["label"] in labels and noisy[i]["label"] != clean[i]["label"]
    assert noisy[i]["text"] == clean[i]["text"]
  assert [e["index"] for e in manifest] == changed
  assert all(e["field"] == "label" for e in manifest)


def test_pair_noise_maps_each_label_to_the_next_and_integer_labels_stay_integers():
  labels = ("a", "b", "c")
  clean = [{"text": "t", "label": i % 3} for i in range(30)]
  noisy, manifest, _ = noise.corrupt(clean, kind="label", rate=0.5, seed=0, labels=labels,
                                     label_noise="pair")
  assert len(manifest) == 15
  for entry in manifest:
    assert entry["after"] == (entry["before"] + 1) % 3
    assert isinstance(noisy[entry["index"]]["label"], int)


def test_label_noise_defaults_to_the_output_of_instruction_records():
  clean = [Record("Classify.", f"review {i}", ("bad", "good")[i % 2]) for i in range(10)]
  noisy, manifest, _ = noise.corrupt(clean, kind="label", rate=0.3, seed=1, labels=("bad", "good"))
  assert len(manifest) == 3 and {e["field"] for e in manifest} == {"output"}
  assert all(isinstance(r, Record) for r in noisy)
  assert sum(a.output != b.output for a, b in zip(clean, noisy)) == 3


def test_symmetric_flips_are_uniform_over_the_other_labels(sentences):
  """Chi-square on the rt-polarity sentences given 4 synthetic classes, half of them flipped."""
  labels = ("w", "x", "y", "z")
  clean = [{"text": r["text"], "label": labels[i % 4]} for i, r in enumerate(sentences)]
  _, manifest, _ = noise.corrupt(clean, kind="label", rate=0.5, seed=0, labels=labels)
  assert len(manifest) == round(0.5 * len(sentences))
  counts = collections.Counter((e["before"], e["after"]) for e in manifest)
  for before in labels:
    observed = [counts[(before, after)] for after in labels if after != before]
    assert counts[(before, before)] == 0
    assert stats.chisquare(observed).pvalue > 1e-3, (before, observed)
  # The same test tells a biased flip apart: "pair" sends everything to one label.
  _, paired, _ = noise.corrupt(clean, kind="label", rate=0.5, seed=0, labels=labels,
                               label_noise="pair")
  counts = collections.Counter((e["before"], e["after"]) for e in paired)
  assert stats.chisquare([counts[("w", a)] for a in "xyz"]).pvalue < 1e-6


# Realized rates --------------------------------------------------------------------

@pytest.mark.parametrize("kind,rate", [("typo", 0.05), ("typo", 0.2), ("grammar", 0.05),
                                       ("grammar", 0.2)])
def test_realized_word_rate_is_within_ten_percent_of_rate(sentences, kind, rate):
  noisy, manifest, realized = noise.corrupt(sentences, kind=kind, rate=rate, seed=0)
  assert realized.words_eligible > 150_000
  assert abs(realized.word_rate - rate) <= 0.1 * rate, realized
  assert realized.as_dict()["word_rate"] == realized.words_changed / realized.words_eligible
  assert realized.records_changed == len(manifest) == sum(a != b for a, b in zip(sentences, noisy))
  assert all(a["label"] == b["label"] for a, b in zip(sentences, noisy))


# Typos -----------------------------------------------------------------------------

TYPO_TEXT = ("The quick brown fox jumps over the lazy dog while NASA engineers watch , "
             "and Peter's cat-like reflexes impress everyone in Zurich .")
QWERTY = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours(a, b):
  """Whether keys a and b touch on a staggered QWERTY keyboard (checked by key centres)."""
  def centre(key):
    row = next(r for r, keys in enumerate(QWERTY) if key in keys)
    return row, QWERTY[row].index(key) + 0.5 * row
  (ra, xa), (rb, xb) = centre(a), centre(b)
  return (ra == rb and abs(xa - xb) == 1) or (abs(ra - rb) == 1 and abs(xa - xb) == 0.5)


def test_the_keyboard_table_holds_exactly_the_touching_keys():
  letters = "".join(QWERTY)
  for a in letters:
    assert set(noise.KEYBOARD_NEIGHBOURS[a]) == {b for b in letters if _neighbours(a, b)}, a


@pytest.mark.parametrize("op", noise.TYPO_OPS)
def test_every_typo_operation_is_one_edit_of_its_kind(op):
  records = [{"input": TYPO_TEXT}] * 40
  _, manifest, realized = noise.corrupt(records, kind="typo", rate=1.0, seed=7, typo_ops=(op,))
  assert realized.word_rate == 1.0
  for entry in manifest:
    for operation in entry["operations"]:
      assert operation["op"] == op
      before, after = operation["before"], operation["after"]
      assert before != after
      b, a = before.lower(), after.lower()
      if op == "insert":
        assert len(a) == len(b) + 1
        assert any(a[:p] + a[p + 1:] == b and _neighbours(a[p], a[p - 1])
                   for p in range(1, len(a)))
      elif op == "delete":
        assert any(b[:p] + b[p + 1:] == a for p in range(len(b)))
      elif op == "substitute":
        diffs = [p for p in range(len(b)) if a[p] != b[p]]
        assert len(a) == len(b) and len(diffs) == 1 and _neighbours(a[diffs[0]], b[diffs[0]])
      else:
        p = next(p for p in range(len(b)) if a[p] != b[p])
        assert a == b[:p] + b[p + 1] + b[p] + b[p + 2:]
      # Case is kept: the same letters are upper case, position by position.
      if op in ("substitute", "swap"):
        assert [c.isupper() for c in after] == [c.isupper() for c in before]
      if before.isupper():
        assert after.isupper()
      if before[0].isupper():
        assert after[0].isupper()


def test_typos_leave_one_letter_words_numbers_and_punctuation_alone():
  text = "a I 42 3rd x ... , ! ok-go"
  noisy, manifest, realized = noise.corrupt([{"text": text}], kind="typo", rate=1.0, seed=0)
  assert realized.words_eligible == 2  # "ok" and "go"
  after = noisy[0]["text"]
  assert after.startswith("a I 42 3rd x ... , ! ") and after != text
  assert [o["before"] for o in manifest[0]["operations"]] == ["ok", "go"]


# Grammar ---------------------------------------------------------------------------

ARTICLES = {"a", "an", "the"}
PREPOSITIONS = {"in", "on", "at", "of", "for", "to", "with", "by", "from", "about", "into",
                "over", "under", "through", "during", "toward", "towards", "onto", "upon"}
AGREEMENT = {("is", "are"), ("was", "were"), ("has", "have"), ("does", "do"),
             ("likes", "like"), ("watches", "watch"), ("tries", "try")}
CONFUSIONS = {("its", "it's"), ("their", "there"), ("their", "they're"), ("there", "they're"),
              ("then", "than"), ("your", "you're")}
VERB_FORMS = {"go": {"went", "gone", "going"}, "take": {"took", "taken", "taking"},
              "watch": {"watched", "watching"}, "see": {"saw", "seen", "seeing"},
              "have": {"had", "having"}}

GRAMMAR_SENTENCES = {
    "article": "I saw a cat and an owl on the roof of the barn .",
    "preposition": "She sat in the car on the road at night with a friend from work .",
    "agreement": "He likes films . They like films . It is good . We are here . She has it . "
                 "They have it . He does . They do . It was fun . They were sad . "
                 "She watches it . You watch it . He tries . They try .",
    "verb_form": "We went home . They had taken the bus . You can go now . I will see it . "
                 "She was watching . They saw it . He has gone . We should take it .",
    "word_swap": "green apples taste sour when picked early",
    "confusion": "its their then your there than you're it's they're",
}


# Every word of each sentence that its operation applies to, and no other.
GRAMMAR_CANDIDATES = {
    "article": {"a", "an", "the"},
    "preposition": {"in", "on", "at", "with", "from"},
    "agreement": {"likes", "like", "is", "are", "has", "have", "does", "do", "was", "were",
                  "watches", "watch", "tries", "try"},
    "verb_form": {"went", "had", "taken", "go", "see", "watching", "saw", "gone", "take"},
    "confusion": {"its", "their", "then", "your", "there", "than", "you're", "it's", "they're"},
}


def _pair_in(before, after, pairs):
  return (before, after) in pairs or (after, before) in pairs


@pytest.mark.parametrize("op", noise.GRAMMAR_OPS)
def test_every_grammar_operation_makes_a_change_of_its_kind(op):
  text = GRAMMAR_SENTENCES[op]
  records = [{"input": text}] * 30
  noisy, manifest, realized = noise.corrupt(records, kind="grammar", rate=0.5, seed=11,
                                            grammar_ops=(op,))
  assert realized.words_changed > 0 and len(manifest) > 0
  words = text.split()
  if op in GRAMMAR_CANDIDATES:  # 30 copies at rate 0.5: every candidate is hit in some copy
    assert {o["before"] for e in manifest for o in e["operations"]} == GRAMMAR_CANDIDATES[op]
  for entry in manifest:
    after_words = entry["after"].split()
    for operation in entry["operations"]:
      assert operation["op"] == op
      before, after = operation["before"].lower(), operation["after"].lower()
      assert before != after
      if op == "article":
        assert before in ARTICLES and (after in ARTICLES or after == "")
      elif op == "preposition":
        assert before in PREPOSITIONS and after in PREPOSITIONS
      elif op == "agreement":
        assert _pair_in(before, after, AGREEMENT), (before, after)
      elif op == "verb_form":
        assert any({before, after} <= {base} | forms for base, forms in VERB_FORMS.items()), \
            (before, after)
      elif op == "confusion":
        assert _pair_in(before, after, CONFUSIONS), (before, after)
      else:
        first, second = before.split()
        assert after == f"{second} {first}"
        assert f"{first} {second}" in text
    if op == "word_swap":  # the same words, each moved by at most one place
      assert sorted(after_words) == sorted(words)
      assert all(w in words[max(0, i - 1):i + 2] for i, w in enumerate(after_words))
    elif op != "article":  # substitutions only: the words stay where they were
      assert len(after_words) == len(words)
      changed = {o["before"] for o in entry["operations"]}
      assert all(a == b or b in changed for a, b in zip(after_words, words))


@pytest.mark.parametrize("text,dropped", [("I saw the film", "I saw film"), ("The end", "end"),
                                          ("he saw the.", "he saw."), ("x ( the ) y", "x ( ) y")])
def test_a_dropped_article_takes_one_space_with_it(text, dropped):
  noisy, manifest, _ = noise.corrupt([{"text": text}] * 40, kind="grammar", rate=1.0, seed=2,
                                     grammar_ops=("article",))
  edits = collections.Counter(e["operations"][0]["edit"] for e in manifest)
  assert edits["drop"] > 0 and edits["substitute"] > 0
  for entry in manifest:
    if entry["operations"][0]["edit"] == "drop":
      assert entry["after"] == dropped


def test_replacements_keep_the_case_of_the_word_they_replace():
  _, manifest, _ = noise.corrupt([{"text": "The end. THE END. the end."}] * 20, kind="grammar",
                                 rate=1.0, seed=2, grammar_ops=("article",))
  for operation in (o for e in manifest for o in e["operations"] if o["after"]):
    before, after = operation["before"], operation["after"]
    if before == "THE":
      assert after in ("A", "AN")
    elif before == "The":
      assert after in ("A", "An")
    else:
      assert after in ("a", "an")


# Seeds and the manifest ------------------------------------------------------------

@pytest.mark.parametrize("kind", noise.KINDS)
def test_the_same_seed_gives_the_same_noise_and_another_seed_other_noise(sentences, kind):
  records = sentences[::20]
  args = dict(kind=kind, rate=0.2, labels=rt_polarity.LABELS)
  first = noise.corrupt(records, seed=5, **args)
  assert noise.corrupt(records, seed=5, **args) == first
  other = noise.corrupt(records, seed=6, **args)
  assert other[0] != first[0] and other[1] != first[1]


@pytest.mark.parametrize("kind", noise.KINDS)
def test_the_manifest_applied_to_the_clean_data_gives_the_noisy_data(sentences, tmp_path, kind):
  records = sentences[::10]
  noisy, manifest, _ = noise.corrupt(records, kind=kind, rate=0.3, seed=1,
                                     labels=rt_polarity.LABELS)
  path = str(tmp_path / "manifest.jsonl")
  noise.write_manifest(path, manifest)
  read = noise.read_manifest(path)
  assert read == manifest
  assert noise.apply_manifest(records, read) == noisy
  keys = {"index", "field", "before", "after", "operations"}
  assert all(set(entry) == keys for entry in read)
  with pytest.raises(UserError, match=r"manifest line 1: record \d+ .* clean data"):
    noise.apply_manifest(records[::-1], read)


def test_records_keep_their_type_and_unchanged_ones_stay_as_they_were():
  clean = [Record("Fix the text.", f"the cat sat on the mat number {i}", "ok") for i in range(20)]
  noisy, manifest, _ = noise.corrupt(clean, kind="grammar", rate=0.3, seed=0)
  assert {e["field"] for e in manifest} == {"input"}
  changed = {e["index"] for e in manifest}
  assert all(isinstance(r, Record) for r in noisy)
  assert all((noisy[i] is clean[i]) == (i not in changed) for i in range(20))
  assert noise.apply_manifest(clean, manifest) == noisy


# Bad input -------------------------------------------------------------------------

BAD = [
    (dict(kind="typo", rate=1.5), r"rate=1\.5 is outside \[0, 1\]"),
    (dict(kind="typo", rate=-0.1), r"rate=-0\.1 is outside \[0, 1\]"),
    (dict(kind="typo", rate=math.nan), r"rate=nan is outside \[0, 1\]"),
    (dict(kind="tpyo", rate=0.1), r"kind='tpyo' is not one of 'label', 'typo', 'grammar'"),
    (dict(kind="typo", rate=0.1, typo_ops=("swap", "transpose")),
     r"typo_ops: unknown operation 'transpose'"),
    (dict(kind="grammar", rate=0.1, grammar_ops=("tense",)),
     r"grammar_ops: unknown operation 'tense'"),
    (dict(kind="typo", rate=0.1, fields=("txet",)), r"no field 'txet'; they have label, text"),
    (dict(kind="label", rate=0.1), r"label noise needs the label set"),
    (dict(kind="label", rate=0.1, labels=("negative", "neutral")),
     r"record 1 \(counting from 0\) has 'positive' as its label 'label', which is not in the "
     r"label set"),
    (dict(kind="label", rate=0.1, labels=("a", "a")), r"names a label twice"),
    (dict(kind="label", rate=0.1, label_noise="asymmetric", labels=("x", "y")),
     r"label_noise='asymmetric' is not one of 'symmetric', 'pair'"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_user_error_naming_what_to_fix(args, message):
  records = [{"text": "a bad film", "label": "negative"},
             {"text": "a good one", "label": "positive"}]
  with pytest.raises(UserError, match=message) as error:
    noise.corrupt(records, seed=0, **args)
  assert "\n" not in str(error.value)


def test_integer_labels_out_of_range_and_non_text_fields_name_the_record():
  with pytest.raises(UserError,
                     match=r"record 2 \(counting from 0\): label 'label' = 2 is out of range"):
    noise.corrupt([{"label": 0}, {"label": 1}, {"label": 2}], kind="label", rate=0.5,
                  labels=("no", "yes"))
  with pytest.raises(UserError, match=r"record 1 \(counting from 0\): field 'text' holds a int"):
    noise.corrupt([{"text": "fine"}, {"text": 7}], kind="typo", rate=0.5)


# The command -----------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_the_command_writes_the_input_format_and_its_manifest_reproduces_it(tmp_path, suffix):
  rows = [{"instruction": "Classify.", "input": f"the film was good and it is long {i}",
           "output": ("negative", "positive")[i % 2], "id": i} for i in range(12)]
  clean = str(tmp_path / f"clean{suffix}")
  if suffix == ".json":
    with open(clean, "w") as f:
      json.dump(rows, f)
  elif suffix == ".jsonl":
    with open(clean, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  elif suffix == ".csv":
    import csv
    with open(clean, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  else:
    import datasets
    datasets.Dataset.from_list(rows).to_parquet(clean)
  out = str(tmp_path / f"noisy{suffix}")
  realized = corrupt.corrupt_file(clean, out, kind="label", rate=0.5, seed=0,
                                  labels=("negative", "positive"))
  assert realized.records_changed == 6
  noisy_rows, file_format, _ = corrupt.read_rows(out)
  assert file_format == suffix[1:]
  assert [int(r["id"]) for r in noisy_rows] == list(range(12))  # every column kept (CSV: text)
  assert sum(a["output"] != b["output"] for a, b in zip(rows, noisy_rows)) == 6
  again = str(tmp_path / f"again{suffix}")
  corrupt.corrupt_file(clean, again, apply_manifest=corrupt.manifest_path(out))
  assert corrupt.read_rows(again)[0] == noisy_rows
  if suffix != ".parquet":
    assert open(again).read() == open(out).read()


def test_the_command_prints_one_error_line_and_writes_nothing(tmp_path):
  clean = tmp_path / "clean.jsonl"
  clean.write_text('{"instruction": "Say.", "input": "hello there", "output": "hi"}\n')
  out = tmp_path / "noisy.jsonl"
  result = subprocess.run(
      [sys.executable, "-m", "neft_jax.data.corrupt", f"--data={clean}", f"--out={out}",
       "--kind=label", "--rate=0.5", "--labels=hi,bye", "--fields=outptu"],
      capture_output=True, text=True, timeout=120,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines() == [
      "error: fields: the records have no field 'outptu'; they have input, instruction, output"]
  assert sorted(os.listdir(tmp_path)) == ["clean.jsonl"]
