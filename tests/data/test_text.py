"""Plain-text documents (neft_jax.data.text): the sources, their errors, tokenization and choice."""

import json

import numpy as np
import pytest

from neft_jax.data import templates, text
from neft_jax.data.sources import Fields, Record
from neft_jax.demo import train_tokenizer
from neft_jax.errors import UserError

WORDS = "the quick brown fox jumps over the lazy dog and a stitch in time saves nine".split()


@pytest.fixture(scope="module")
def tokenizer():
  """Byte-level BPE, <s> = 0 (added in front by its post-processor, which tokenize skips)."""
  return train_tokenizer([" ".join(WORDS)] * 4, 290, 2)


def test_txt_is_one_document_a_line_blank_lines_skipped(tmp_path):
  (tmp_path / "docs.txt").write_text("first line\n\n   \nsecond line  \r\nthird\n")
  assert text.load_documents(str(tmp_path / "docs.txt")) == ["first line", "second line  ", "third"]


def test_json_jsonl_and_a_folder_read_the_text_field(tmp_path):
  (tmp_path / "a.json").write_text(json.dumps([{"body": "one"}, {"body": " "}, {"body": "two"}]))
  (tmp_path / "b.jsonl").write_text('{"body": "three", "id": 1}\n\n{"body": "four"}\n')
  (tmp_path / "c.txt").write_text("five\n")
  assert text.load_documents(str(tmp_path / "a.json"), text_field="body") == ["one", "two"]
  assert text.load_documents(str(tmp_path), text_field="body") == [
      "one", "two", "three", "four", "five"]


def test_instruction_records_become_prompt_and_output(tmp_path):
  records = [{"instruction": "Add.", "input": "1 + 2", "output": "3"},
             {"question": "Name a color.", "answer": "Blue"}]
  (tmp_path / "a.json").write_text(json.dumps(records[:1]))
  (tmp_path / "b.json").write_text(json.dumps(records[1:]))
  assert text.load_documents(str(tmp_path / "a.json")) == [
      templates.ALPACA_WITH_INPUT.format(instruction="Add.", input="1 + 2") + "3"]
  fields = Fields(instruction="question", input="context", output="answer")
  assert text.load_documents(str(tmp_path / "b.json"), fields=fields) == [
      templates.prompt(Record("Name a color.", "", "Blue"), "alpaca") + "Blue"]


@pytest.mark.parametrize("name, content, message", [
    ("blank.txt", "\n \n", "Fisher data with no text"),
    ("empty.jsonl", "", "Fisher data with no text"),
    ("empties.json", json.dumps([{"text": ""}, {"text": "  "}]), "Fisher data with no text"),
    ("mixed.jsonl", '{"text": "fine"}\n{"content": "no text field"}\n',
     "record 1 (counting from 0) has no 'text' field; give every record a text in 'text' "
     "(fisher.text_field), or give instruction records ('instruction' and 'output')"),
    ("number.json", json.dumps([{"text": 7}]),
     "record 0 (counting from 0) has a non-string (int) 'text' field"),
    ("docs.tsv", "a\tb\n", "unknown text format"),
])
def test_bad_text_is_one_error_naming_file_record_and_field(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_text(content)
  with pytest.raises(UserError) as info:
    text.load_documents(str(path))
  assert str(path) in str(info.value) and message in str(info.value)
  assert "\n" not in str(info.value)


def test_missing_file_and_unset_path(tmp_path):
  with pytest.raises(UserError, match=r"fisher.data_path='.*nothing.txt' does not exist"):
    text.load_documents(str(tmp_path / "nothing.txt"))
  with pytest.raises(UserError, match="fisher.data_path is not set"):
    text.load_documents("")


def test_tokenize_adds_bos_cuts_and_skips_short_documents(tokenizer):
  documents = ["the quick brown fox", "a", "the lazy dog jumps over the quick brown fox again"]
  plain = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in documents]
  assert len(plain[1]) == 1 and len(plain[2]) > 6
  out = text.tokenize_documents(documents, tokenizer, max_length=6, num_examples=10, bos=None, seed=0)
  assert [list(ids) for ids in out.input_ids] == [plain[0][:6], plain[2][:6]]
  assert (out.selection, out.num_documents, out.num_too_short) == ("all", 3, 1)
  assert out.num_truncated == (len(plain[0]) > 6) + 1 and out.num_tokens == 6 + len(plain[0][:6])
  with_bos = text.tokenize_documents(documents, tokenizer, max_length=6, num_examples=10, bos=0,
                                     seed=0)
  assert [list(ids) for ids in with_bos.input_ids] == [
      ([0] + p)[:6] for p in plain]  # "a" has 2 tokens with BOS
  assert all(ids.dtype == np.int32 for ids in with_bos.input_ids)


def test_a_bigger_corpus_is_a_seeded_subsample_in_corpus_order(tokenizer):
  documents = [f"{i} {WORDS[(i * 7) % len(WORDS)]}" for i in range(40)]  # all different
  documents[3] = "a"  # one token: never chosen
  pick = lambda seed: text.tokenize_documents(documents, tokenizer, max_length=8, num_examples=10,
                                              bos=None, seed=seed, chunk=7)
  first, again, other = pick(0), pick(0), pick(1)
  assert first.selection == "seeded_subsample" and len(first.input_ids) == 10
  assert [list(i) for i in first.input_ids] == [list(i) for i in again.input_ids]
  assert [list(i) for i in first.input_ids] != [list(i) for i in other.input_ids]
  encoded = [tokenizer(d, add_special_tokens=False)["input_ids"] for d in documents]
  positions = [encoded.index(list(ids)) for ids in first.input_ids]
  assert positions == sorted(positions) and 3 not in positions
