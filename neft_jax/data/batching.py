"""Rows of fixed length, global batches, and each host's share of them (Grain).

A *row* is `max_length` tokens: one padded example, or several examples packed
end to end with `segment_ids` (1, 2, ... per example, 0 on padding). Rows are
planned per epoch from a permutation seeded by (seed, epoch), so the order,
and with packing the grouping, depends only on the data and the seed, never
on the number of hosts or devices.

Global step s takes rows [s*B, (s+1)*B) of the plan (B = train.batch_size),
as grad_accum_steps micro-batches of B / grad_accum_steps rows. Each process
reads only its contiguous slice of every micro-batch, so the global batch is
the same on one host or many. Grain's MapDataset does the batching, slicing
and prefetching; its iterator state is the data position saved in checkpoints.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from neft_jax.data.tokenize import TokenizedSet
from neft_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """How a global batch of rows splits into micro-batches and processes."""
  batch_size: int  # rows per optimizer step, over all processes and devices
  grad_accum_steps: int = 1
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if self.batch_size < 1 or self.grad_accum_steps < 1:
      raise UserError(f"train.batch_size={self.batch_size} and train.grad_accum_steps="
                      f"{self.grad_accum_steps} must be at least 1")
    if self.batch_size % self.grad_accum_steps:
      raise UserError(f"train.batch_size={self.batch_size} is not a multiple of "
                      f"train.grad_accum_steps={self.grad_accum_steps}")

  @property
  def micro_batch_size(self) -> int:
    return self.batch_size // self.grad_accum_steps

  @property
  def rows_per_process(self) -> int:
    """Rows of each micro-batch that this process reads."""
    return self.micro_batch_size // self.process_count


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def pack_first_fit(lengths: np.ndarray, max_length: int, open_rows: int = 32) -> list[np.ndarray]:
  """Groups examples (in the given order) into rows of at most max_length tokens.

  Each example goes into the first open row with room; when none has room
  and `open_rows` rows are open, the fullest one is closed. Rows come out in
  the order they close, so the result is a pure function of the order.
  """
  rows: list[np.ndarray] = []
  members: list[list[int]] = []
  room = np.zeros(0, np.int64)
  for index, length in enumerate(lengths):
    fits = np.flatnonzero(room >= length)
    if fits.size:
      slot = int(fits[0])
    else:
      if len(members) == open_rows:
        fullest = int(np.argmin(room))
        rows.append(np.asarray(members.pop(fullest)))
        room = np.delete(room, fullest)
      members.append([])
      room = np.append(room, max_length)
      slot = len(members) - 1
    members[slot].append(index)
    room[slot] -= length
  rows += [np.asarray(m) for m in members]
  return rows


def plan_epoch(lengths: np.ndarray, *, max_length: int, packing: bool, seed: int, epoch: int,
               batch_size: int) -> list[np.ndarray]:
  """Example indices of every row of one epoch; a trailing partial batch is dropped."""
  order = epoch_order(len(lengths), seed, epoch)
  if packing:
    rows = [order[r] for r in pack_first_fit(lengths[order], max_length)]
  else:
    rows = [order[i:i + 1] for i in range(len(order))]
  return rows[: len(rows) - len(rows) % batch_size]


def make_row(data: TokenizedSet, indices: np.ndarray, max_length: int) -> dict[str, np.ndarray]:
  """input_ids, segment_ids and loss_mask of one row, padded to max_length."""
  input_ids = np.zeros(max_length, np.int32)
  segment_ids = np.zeros(max_length, np.int32)
  loss_mask = np.zeros(max_length, bool)
  start = 0
  for segment, index in enumerate(indices, start=1):
    ids = data.input_ids[index]
    end = start + len(ids)
    input_ids[start:end] = ids
    segment_ids[start:end] = segment
    loss_mask[start:end] = data.loss_masks[index]
    start = end
  return {"input_ids": input_ids, "segment_ids": segment_ids, "loss_mask": loss_mask}


def _process_share(rows: grain.MapDataset, layout: BatchLayout) -> grain.MapDataset:
  """This process's contiguous slice of every micro-batch."""
  if layout.micro_batch_size % layout.process_count:
    raise UserError(f"the micro-batch of {layout.micro_batch_size} rows does not split over "
                    f"{layout.process_count} processes; make train.batch_size / "
                    "train.grad_accum_steps a multiple of the process count")
  slices = rows.batch(layout.rows_per_process, drop_remainder=True)
  return slices[layout.process_index::layout.process_count]


@dataclasses.dataclass
class TrainData:
  batches: grain.MapDataset  # element s: this process's rows of step s, [accum, rows, length]
  steps_per_epoch: int
  num_rows: int
  fill: float  # fraction of row tokens that are real (not padding)

  def __len__(self) -> int:
    return len(self.batches)

  def iterator(self, read_options: grain.ReadOptions | None = None):
    """A checkpointable iterator (get_state / set_state) over the steps."""
    options = read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    return iter(self.batches.to_iter_dataset(options))


def train_data(data: TokenizedSet, *, max_length: int, packing: bool, seed: int, layout: BatchLayout,
               epochs: int = 1, steps: int = 0) -> TrainData:
  """Steps for `epochs` passes, or (with steps > 0) as many epochs as `steps` needs."""
  lengths = data.lengths
  plan: list[np.ndarray] = []
  epoch = 0
  first_epoch_steps = None
  while True:
    rows = plan_epoch(lengths, max_length=max_length, packing=packing, seed=seed, epoch=epoch,
                      batch_size=layout.batch_size)
    if not rows:
      raise UserError(f"{len(lengths)} training examples make fewer rows than one batch of "
                      f"train.batch_size={layout.batch_size}; lower the batch size or add data")
    plan += rows
    epoch += 1
    first_epoch_steps = first_epoch_steps or len(rows) // layout.batch_size
    if (steps and len(plan) >= steps * layout.batch_size) or (not steps and epoch >= epochs):
      break
  if steps:
    plan = plan[: steps * layout.batch_size]
  real_tokens = sum(int(lengths[r].sum()) for r in plan)
  rows = grain.MapDataset.source(plan).map(lambda indices: make_row(data, indices, max_length))
  batches = _process_share(rows, layout).batch(layout.grad_accum_steps, drop_remainder=True)
  return TrainData(batches, first_epoch_steps, len(plan), real_tokens / (len(plan) * max_length))


def eval_batches(data: TokenizedSet, *, max_length: int, layout: BatchLayout) -> grain.MapDataset:
  """Every example once, one per row, in order; the last batch is filled with empty rows."""
  batch = layout.micro_batch_size
  plan = [np.array([i]) for i in range(len(data))]
  plan += [np.array([], np.int64)] * (-len(plan) % batch)
  rows = grain.MapDataset.source(plan).map(lambda indices: make_row(data, indices, max_length))
  return _process_share(rows, layout)
