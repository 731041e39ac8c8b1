"""Response metrics against values worked out by hand."""

import math

import pytest

from neft_jax.response_metrics import (diversity_metrics, exact_match, format_table, log_diversity,
                                       repetition, response_lengths, rouge_l, summarize)

ALTERNATING = "a b a b a b"
# ab ba ab ba ab: 5 bigrams, 2 distinct -> 1 - 2/5
# aba bab aba bab: 4 trigrams, 2 distinct -> 1 - 2/4
# abab baba abab: 3 four-grams, 2 distinct -> 1 - 2/3
ALTERNATING_REPS = {2: 0.6, 3: 0.5, 4: 1 / 3}
ALTERNATING_DIVERSITY = 0.4 * 0.5 * (2 / 3)  # = 2/15
DISTINCT = "one two three four five"


def test_repetition_of_an_alternating_response():
  tokens = ALTERNATING.split()
  for n, expected in ALTERNATING_REPS.items():
    assert repetition(tokens, n) == pytest.approx(expected)


def test_repetition_counts_the_last_window():
  # ab bc ca ab: 4 bigrams, 3 distinct -> 1/4. SimCTG's loop stops before the
  # last "ab", sees 3 distinct of 3 and reports 0.
  assert repetition("a b c a b".split(), 2) == pytest.approx(0.25)


def test_repetition_without_ngrams_is_none():
  assert repetition(["only"], 2) is None
  assert repetition("x y z".split(), 4) is None
  assert repetition([], 2) is None
  with pytest.raises(ValueError, match="at least 1"):
    repetition(["a"], 0)


def test_diversity_of_one_alternating_response():
  metrics = diversity_metrics([ALTERNATING])
  assert metrics["rep_2"] == pytest.approx(0.6)
  assert metrics["rep_3"] == pytest.approx(0.5)
  assert metrics["rep_4"] == pytest.approx(1 / 3)
  # (1 - 0.6) * (1 - 0.5) * (1 - 1/3) = 0.4 * 0.5 * 2/3 = 2/15
  assert metrics["diversity"] == pytest.approx(2 / 15)
  assert metrics["log_diversity"] == pytest.approx(-math.log(1 - 2 / 15))  # -ln(13/15) ≈ 0.1431
  assert metrics["counted"] == 1


def test_all_distinct_tokens_reach_the_ceiling():
  metrics = diversity_metrics([DISTINCT])
  assert metrics["rep_2"] == metrics["rep_3"] == metrics["rep_4"] == 0.0
  assert metrics["diversity"] == 1.0
  # 1 - diversity = 0 is floored at e^-20: -ln(e^-20) = 20.
  assert metrics["log_diversity"] == pytest.approx(20.0)
  assert log_diversity(0.0) == 0.0  # -ln(max(1 - 0, e^-20)) = -ln(1) = 0


def test_only_the_prefix_counts():
  text = "a b c d e f a b c d"
  # First 6 tokens a..f are all distinct: no repetition at all.
  short = diversity_metrics([text], prefix_tokens=6)
  assert short["rep_2"] == short["rep_3"] == short["rep_4"] == 0.0
  assert short["log_diversity"] == pytest.approx(20.0)
  # All 10 tokens: ab bc cd de ef fa ab bc cd -> 9 bigrams, 6 distinct -> 1/3;
  # abc bcd cde def efa fab abc bcd -> 8 trigrams, 6 distinct -> 1/4;
  # abcd bcde cdef defa efab fabc abcd -> 7 four-grams, 6 distinct -> 1/7.
  full = diversity_metrics([text], prefix_tokens=10)
  assert full["rep_2"] == pytest.approx(1 / 3)
  assert full["rep_3"] == pytest.approx(1 / 4)
  assert full["rep_4"] == pytest.approx(1 / 7)
  assert full["diversity"] == pytest.approx((2 / 3) * (3 / 4) * (6 / 7))  # = 3/7
  # The default prefix (128) takes the whole response.
  assert diversity_metrics([text]) == full


def test_short_responses_leave_the_averages_they_cannot_enter():
  texts = [ALTERNATING, "x y z", "solo", ""]
  metrics = diversity_metrics(texts)
  # rep_2: "a b a b a b" 0.6 and "x y z" (xy yz, distinct) 0 -> 0.3; the
  # one-token and empty responses have no bigram.
  assert metrics["rep_2"] == pytest.approx(0.3)
  # rep_3: 0.5 and "x y z" (one trigram) 0 -> 0.25.
  assert metrics["rep_3"] == pytest.approx(0.25)
  # rep_4, diversity, log_diversity: the alternating response alone.
  assert metrics["rep_4"] == pytest.approx(1 / 3)
  assert metrics["diversity"] == pytest.approx(ALTERNATING_DIVERSITY)
  assert metrics["log_diversity"] == pytest.approx(-math.log(13 / 15))
  assert metrics["counted"] == 1


def test_metrics_are_averaged_over_responses():
  metrics = diversity_metrics([ALTERNATING, DISTINCT])
  assert metrics["rep_2"] == pytest.approx((0.6 + 0.0) / 2)
  assert metrics["rep_3"] == pytest.approx((0.5 + 0.0) / 2)
  assert metrics["rep_4"] == pytest.approx((1 / 3 + 0.0) / 2)
  # (2/15 + 1) / 2 = 17/30: the mean of per-response diversities.
  assert metrics["diversity"] == pytest.approx(17 / 30)
  # (-ln(13/15) + 20) / 2, not -ln(1 - 17/30).
  assert metrics["log_diversity"] == pytest.approx((-math.log(13 / 15) + 20.0) / 2)
  assert metrics["counted"] == 2


def test_no_countable_response_gives_none():
  metrics = diversity_metrics(["a b c", "d"])
  assert metrics["rep_4"] is None and metrics["diversity"] is None
  assert metrics["log_diversity"] is None and metrics["counted"] == 0
  assert metrics["rep_2"] == pytest.approx(0.0)  # "a b c" still has bigrams


def test_a_prefix_shorter_than_a_four_gram_is_rejected():
  with pytest.raises(ValueError, match="prefix_tokens"):
    diversity_metrics([DISTINCT], prefix_tokens=3)


def test_response_lengths():
  # "hello world": 11 characters, 2 words; "  a b  c ": 9 characters, 3 words.
  lengths = response_lengths(["hello world", "  a b  c "])
  assert lengths["mean_chars"] == pytest.approx((11 + 9) / 2)
  assert lengths["mean_words"] == pytest.approx((2 + 3) / 2)
  with pytest.raises(ValueError, match="empty"):
    response_lengths([])


def test_rouge_l_hand_computed():
  assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
  assert rouge_l(["dogs bark loudly"], ["the cat sat"]) == 0.0
  # LCS "the cat sat" = 3 tokens; precision 3/3, recall 3/6;
  # F = 2PR / (P + R) = 2 * 1 * 0.5 / 1.5 = 2/3.
  assert rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(2 / 3)
  # Averaged over pairs: (1 + 0 + 2/3) / 3 = 5/9.
  predictions = ["the cat sat on the mat", "dogs bark loudly", "the cat sat"]
  references = ["the cat sat on the mat", "the cat sat", "the cat sat on the mat"]
  assert rouge_l(predictions, references) == pytest.approx(5 / 9)


def test_rouge_l_lowercases_and_stems():
  # Porter: Cats -> cat, Running -> run, runs -> run; the tokens then agree.
  assert rouge_l(["Cats Running!"], ["cat runs"]) == pytest.approx(1.0)


def test_rouge_l_needs_one_reference_per_prediction():
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    rouge_l(["a", "b"], ["a"])


def test_exact_match_strips_surrounding_whitespace_only():
  predictions = [" Paris\n", "paris", "Rome", "New  York"]
  references = ["Paris", "Paris", "Rome ", "New York"]
  # match, case differs, match, inner whitespace differs -> 2/4
  assert exact_match(predictions, references) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="one reference per prediction"):
    exact_match(["a"], [])


def test_summarize_is_flat_and_references_are_optional():
  summary = summarize([ALTERNATING, DISTINCT])
  assert summary["count"] == 2
  assert summary["mean_words"] == pytest.approx((6 + 5) / 2)
  assert summary["diversity"] == pytest.approx(17 / 30)
  assert "rouge_l" not in summary and "exact_match" not in summary
  summary = summarize([ALTERNATING, DISTINCT], [ALTERNATING, "something else entirely"])
  assert summary["exact_match"] == pytest.approx(0.5)
  assert summary["rouge_l"] == pytest.approx(0.5)  # 1 and 0 (no shared word)


def test_format_table_lists_every_metric_aligned():
  summary = summarize([ALTERNATING, "x"], ["a b a b a b", "y"])
  table = format_table(summary)
  lines = table.splitlines()
  assert len(lines) == len(summary) + 1  # a header and one row per metric
  for name in summary:
    assert any(line.split()[0] == name for line in lines)
  assert len({len(line) for line in lines}) == 1  # the columns line up
  row = {line.split()[0]: line.split()[1] for line in lines}
  assert row["rep_2"] == "0.6000"  # "x" has no bigram: the alternating response alone
  assert row["count"] == "2" and row["counted"] == "1"
  assert format_table({"diversity": None}).splitlines()[1].split() == ["diversity", "n/a"]
