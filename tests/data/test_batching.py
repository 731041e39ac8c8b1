"""Rows, packing, epochs and each host's share of a global batch."""

import numpy as np
import pytest

from neft_jax.data import batching
from neft_jax.data.sources import Record
from neft_jax.data.tokenize import TokenizedSet


def synthetic_set(lengths, seed=0):
  rng = np.random.default_rng(seed)
  ids = [rng.integers(3, 100, n).astype(np.int32) for n in lengths]
  masks = [np.arange(n) >= n // 2 for n in lengths]
  return TokenizedSet(ids, masks, [Record(f"r{i}", "", "x") for i in range(len(lengths))])


LENGTHS = np.random.default_rng(1).integers(5, 60, 203)


def test_first_fit_packing_places_every_example_once_within_max_length():
  rows = batching.pack_first_fit(LENGTHS, max_length=64)
  placed = np.concatenate(rows)
  assert sorted(placed.tolist()) == list(range(len(LENGTHS)))
  assert all(LENGTHS[r].sum() <= 64 for r in rows)
  assert len(rows) < len(LENGTHS) * 0.7  # it does pack
  assert [r.tolist() for r in rows] == [r.tolist() for r in batching.pack_first_fit(LENGTHS, 64)]


def test_epochs_are_shuffled_differently_and_reproducibly():
  plan = lambda seed, epoch: [r.tolist() for r in batching.plan_epoch(
      LENGTHS, max_length=64, packing=False, seed=seed, epoch=epoch, batch_size=4)]
  assert plan(0, 0) == plan(0, 0)
  assert plan(0, 0) != plan(0, 1)
  assert plan(0, 0) != plan(1, 0)
  assert len(plan(0, 0)) == len(LENGTHS) - len(LENGTHS) % 4  # the partial batch is dropped


def test_rows_carry_segments_and_response_masks():
  data = synthetic_set([5, 7, 3])
  row = batching.make_row(data, np.array([2, 0]), max_length=12)
  assert row["segment_ids"].tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 0, 0, 0, 0]
  assert row["input_ids"][:3].tolist() == data.input_ids[2].tolist()
  assert row["input_ids"][3:8].tolist() == data.input_ids[0].tolist()
  assert row["loss_mask"].tolist() == [False, True, True, False, False, True, True, True] + [False] * 4


@pytest.mark.parametrize("packing", [False, True])
def test_process_shares_make_the_single_process_batch(packing):
  data = synthetic_set(LENGTHS)
  kwargs = dict(max_length=64, packing=packing, seed=3, epochs=2)
  single = batching.train_data(data, layout=batching.BatchLayout(8, 2), **kwargs)
  shares = [batching.train_data(data, layout=batching.BatchLayout(8, 2, index, 2), **kwargs)
            for index in range(2)]
  assert len(single) == len(shares[0]) == len(shares[1]) > 0
  for step in (0, len(single) - 1):
    whole = single.batches[step]["input_ids"]  # [accum, rows, length]
    assert whole.shape == (2, 4, 64)
    parts = [share.batches[step]["input_ids"] for share in shares]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


def test_steps_beyond_one_epoch_add_epochs():
  data = synthetic_set(LENGTHS)
  train = batching.train_data(data, max_length=64, packing=False, seed=0,
                              layout=batching.BatchLayout(16), steps=30)
  assert len(train) == 30 and train.steps_per_epoch == len(LENGTHS) // 16


def test_iterator_position_restores():
  data = synthetic_set(LENGTHS)
  train = batching.train_data(data, max_length=64, packing=True, seed=0,
                              layout=batching.BatchLayout(4), epochs=1)
  iterator = train.iterator()
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = next(iterator)
  resumed = train.iterator()
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["input_ids"], expected["input_ids"])


def test_eval_batches_cover_every_example_once():
  data = synthetic_set(LENGTHS[:10])
  batches = batching.eval_batches(data, max_length=64, layout=batching.BatchLayout(4))
  assert len(batches) == 3
  segments = np.concatenate([b["segment_ids"] for b in batches])
  assert (segments.max(axis=1) == 1).sum() == 10 and (segments.max(axis=1) == 0).sum() == 2
