"""Metrics of generated answers: length, repetition, diversity, ROUGE-L, exact match.

The NEFTune paper (Jain et al., ICLR 2024) shows that NEFTune models answer at
greater length without repeating themselves more. These functions measure both
on plain strings, so they need no model and no JAX.

Length: the mean of `len(text)` (characters) and of `len(text.split())`
(whitespace tokens) over the responses.

Repetition and diversity, the NEFTune authors' definition (inherited from
SimCTG), with these conventions:

  * tokens are whitespace tokens, `text.split()`; no lower-casing, so "The" and
    "the" differ and punctuation stays attached to its word;
  * only the first `prefix_tokens` tokens of each response count (default 128);
  * the n-grams of a prefix of T tokens are all T - n + 1 contiguous windows,
    and for n in (2, 3, 4)

        rep_n = 1 - (number of distinct n-grams) / (number of n-grams);

    the authors' code, taken from SimCTG, stops one window early and so never
    sees the last n-gram; we count every window;
  * diversity = (1 - rep_2) * (1 - rep_3) * (1 - rep_4), as a fraction in
    [0, 1]; the authors' code divides these fractions by 100 once more, as if
    they were percentages, a slip we do not reproduce (it came with
    lm-watermarking's copy of SimCTG's code, not from SimCTG);
  * log_diversity = -ln(max(1 - diversity, e^-20)); the e^-20 floor is the
    authors', so a response without a repeated n-gram scores exactly 20;
  * every metric is computed per response and then averaged over responses
    (log_diversity is the mean of the per-response values, not the log of the
    mean diversity). A response with fewer than n tokens has no n-gram: it is
    left out of the rep_n average and, lacking rep_4, out of the diversity and
    log_diversity averages. `counted` is the number of responses in those two
    averages, i.e. those with at least 4 tokens; a mean over no response is
    None.

ROUGE-L: the F-measure of Google's `rouge_score` "rougeL" (sentence-level
longest common subsequence, not "rougeLsum"), with its default tokenizer
(lower-cased, every character other than a-z and 0-9 treated as a space, so
text in other scripts has no tokens and scores 0) and the Porter stemmer, of
each response against its reference, averaged over the pairs.

Exact match: the fraction of responses equal to their reference once
surrounding whitespace is stripped; case and inner whitespace count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

NGRAM_SIZES = (2, 3, 4)
# The authors' floor on 1 - diversity: log_diversity is at most 20.
LOG_DIVERSITY_CEILING = 20.0


def _mean(values: Sequence[float]) -> float | None:
  return sum(values) / len(values) if values else None


def _require_responses(texts: Sequence[str], what: str) -> None:
  if not texts:
    raise ValueError(f"{what}: no responses to measure (the list of responses is empty)")


def response_lengths(texts: Sequence[str]) -> dict:
  """Mean characters and mean whitespace tokens per response."""
  _require_responses(texts, "response_lengths")
  return {
      "mean_chars": _mean([len(text) for text in texts]),
      "mean_words": _mean([len(text.split()) for text in texts]),
  }


def repetition(tokens: Sequence[str], n: int) -> float | None:
  """rep_n = 1 - distinct / total over all len(tokens) - n + 1 windows; None if there are none."""
  if n < 1:
    raise ValueError(f"repetition: the n-gram size must be at least 1, got {n}")
  ngrams = [tuple(tokens[start:start + n]) for start in range(len(tokens) - n + 1)]
  if not ngrams:
    return None
  return 1.0 - len(set(ngrams)) / len(ngrams)


def log_diversity(diversity: float) -> float:
  """-ln(max(1 - diversity, e^-20)): 20 for a response without a repeated n-gram."""
  return -math.log(max(1.0 - diversity, math.exp(-LOG_DIVERSITY_CEILING)))


def diversity_metrics(texts: Sequence[str], prefix_tokens: int = 128) -> dict:
  """rep_2, rep_3, rep_4, diversity, log_diversity and counted (see the module docstring)."""
  if prefix_tokens < max(NGRAM_SIZES):
    raise ValueError(f"diversity_metrics: prefix_tokens must be at least {max(NGRAM_SIZES)} "
                     f"(the longest n-gram), got {prefix_tokens}")
  reps = {n: [] for n in NGRAM_SIZES}
  diversities, log_diversities = [], []
  for text in texts:
    prefix = text.split()[:prefix_tokens]
    response_reps = {n: repetition(prefix, n) for n in NGRAM_SIZES}
    for n, rep in response_reps.items():
      if rep is not None:
        reps[n].append(rep)
    if any(rep is None for rep in response_reps.values()):
      continue  # too short for every n-gram size: no diversity
    diversity = math.prod(1.0 - rep for rep in response_reps.values())
    diversities.append(diversity)
    log_diversities.append(log_diversity(diversity))
  metrics = {f"rep_{n}": _mean(reps[n]) for n in NGRAM_SIZES}
  metrics["diversity"] = _mean(diversities)
  metrics["log_diversity"] = _mean(log_diversities)
  metrics["counted"] = len(diversities)
  return metrics


def _check_pairs(predictions: Sequence[str], references: Sequence[str], what: str) -> None:
  if len(predictions) != len(references):
    raise ValueError(f"{what}: {len(predictions)} predictions but {len(references)} references; "
                     "give one reference per prediction, in the same order")
  _require_responses(predictions, what)


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer():
  # Imported here: rouge_score pulls in nltk, which the other metrics do not need.
  from rouge_score import rouge_scorer
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Mean ROUGE-L F-measure of each prediction against its reference."""
  _check_pairs(predictions, references, "rouge_l")
  scorer = _rouge_l_scorer()
  scores = [scorer.score(target=reference, prediction=prediction)["rougeL"].fmeasure
            for prediction, reference in zip(predictions, references)]
  return _mean(scores)


def exact_matches(predictions: Sequence[str], references: Sequence[str]) -> list[bool]:
  """Per prediction: equal to its reference after stripping surrounding whitespace."""
  _check_pairs(predictions, references, "exact_match")
  return [prediction.strip() == reference.strip()
          for prediction, reference in zip(predictions, references)]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
  """Fraction of predictions equal to their reference after stripping surrounding whitespace."""
  return _mean(exact_matches(predictions, references))


def summarize(predictions: Sequence[str], references: Sequence[str] | None = None,
              prefix_tokens: int = 128) -> dict:
  """Every metric above in one flat dict; rouge_l and exact_match only with references."""
  _require_responses(predictions, "summarize")
  summary = {"count": len(predictions)}
  summary.update(response_lengths(predictions))
  summary.update(diversity_metrics(predictions, prefix_tokens))
  if references is not None:
    summary["rouge_l"] = rouge_l(predictions, references)
    summary["exact_match"] = exact_match(predictions, references)
  return summary


def format_table(summary: dict) -> str:
  """Two aligned columns, metric and value; floats to 4 decimals, None as "n/a"."""
  def text_of(value) -> str:
    if value is None:
      return "n/a"
    if isinstance(value, float):
      return f"{value:.4f}"
    return str(value)

  rows = [("metric", "value")] + [(name, text_of(value)) for name, value in summary.items()]
  name_width = max(len(name) for name, _ in rows)
  value_width = max(len(value) for _, value in rows)
  return "\n".join(f"{name:<{name_width}}  {value:>{value_width}}" for name, value in rows)
