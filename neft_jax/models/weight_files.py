"""Hugging Face weight files, read and written one tensor at a time.

Reading: safetensors (one file, or shards listed in model.safetensors.index.json)
and pytorch_model.bin (one or sharded; needs torch). Safetensors tensors are
read with plain `readinto` into a fresh buffer rather than through a memory
map: pages of a mapped file stay in the process's resident set while the map
is open, which would double peak memory for a checkpoint read whole.

Writing: safetensors with the header computed up front from the shapes, then
each tensor's bytes in turn, so saving never holds the whole model on the host.
Sharded output follows Hugging Face's names and index file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from neft_jax.errors import UserError

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: str
  dtype: np.dtype
  shape: tuple[int, ...]
  offset: int = 0  # byte offset of the data in a safetensors file


def weight_file_names(folder: str) -> list[str]:
  """The names of a checkpoint folder's weight files (.safetensors, .bin), in name order."""
  return sorted(name for name in os.listdir(folder) if name.endswith(WEIGHT_SUFFIXES))


def read_safetensors_header_bytes(path: str) -> bytes:
  """A safetensors file's JSON header as stored: every tensor's name, dtype, shape, offsets."""
  with open(path, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
    if header_len > 100_000_000:
      raise UserError(f"{path} is not a valid safetensors file (header of {header_len} bytes)")
    header = f.read(header_len)
  if len(header) != header_len:
    raise UserError(f"{path} ends inside its header; the file is truncated")
  return header


def read_safetensors_header(path: str) -> dict[str, TensorInfo]:
  header_bytes = read_safetensors_header_bytes(path)
  try:
    header = json.loads(header_bytes)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is not a valid safetensors file ({e})") from None
  data_start = 8 + len(header_bytes)
  infos = {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
      raise UserError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which neft_jax cannot read")
    infos[name] = TensorInfo(path, dtype, tuple(entry["shape"]), data_start + entry["data_offsets"][0])
  return infos


class WeightFiles:
  """The weight tensors of one checkpoint folder: their names, and one read at a time."""

  def __init__(self, folder: str):
    self.folder = folder
    self.infos: dict[str, TensorInfo] = {}
    self._handles: dict[str, object] = {}
    self._torch_files: dict[str, dict] = {}
    listing = set(os.listdir(folder))
    if SAFE_INDEX in listing or SAFE_SINGLE in listing:
      for file in self._files(SAFE_INDEX, SAFE_SINGLE):
        self.infos.update(read_safetensors_header(file))
      self.format = "safetensors"
    elif BIN_INDEX in listing or BIN_SINGLE in listing:
      for file in self._files(BIN_INDEX, BIN_SINGLE):
        for name, tensor in self._torch_state(file).items():
          self.infos[name] = TensorInfo(file, _torch_to_numpy_dtype(tensor.dtype), tuple(tensor.shape))
      self.format = "pytorch"
    else:
      raise UserError(
          f"{folder} has no weights: expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}")

  def _files(self, index_name: str, single_name: str) -> list[str]:
    index_path = os.path.join(self.folder, index_name)
    if not os.path.exists(index_path):
      return [os.path.join(self.folder, single_name)]
    try:
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise UserError(f"{index_path} is not a valid index file (needs a 'weight_map'): {e}") from None
    files = sorted(set(weight_map.values()))
    missing = [f for f in files if not os.path.exists(os.path.join(self.folder, f))]
    if missing:
      raise UserError(f"{index_path} lists shard(s) that are not in the folder: {missing}")
    return [os.path.join(self.folder, f) for f in files]

  def _torch_state(self, file: str) -> dict:
    if file not in self._torch_files:
      try:
        import torch
      except ImportError:
        raise UserError(f"{file} is a PyTorch pickle; install torch to read it, or convert "
                        "the checkpoint to safetensors") from None
      # mmap: tensors are read from disk when used, not all at once.
      self._torch_files[file] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    return self._torch_files[file]

  def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
    """The tensor's data in its stored dtype: in a fresh array, or read straight
    into `out` (C-contiguous, same dtype and size) to save a copy."""
    info = self.infos[name]
    if self.format == "pytorch":
      array = _torch_to_numpy(self._torch_state(info.file)[name])
      if out is None:
        return array
      out[...] = array.reshape(out.shape)
      return out
    handle = self._handles.get(info.file)
    if handle is None:
      handle = self._handles[info.file] = open(info.file, "rb")
    array = np.empty(info.shape, info.dtype) if out is None else out
    assert array.dtype == info.dtype and array.size == int(np.prod(info.shape))
    handle.seek(info.offset)
    if handle.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
      raise UserError(f"{info.file} ends inside tensor {name!r}; the file is truncated")
    return array

  def close(self):
    for handle in self._handles.values():
      handle.close()
    self._handles.clear()
    self._torch_files.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _torch_to_numpy_dtype(torch_dtype) -> np.dtype:
  import torch
  if torch_dtype == torch.bfloat16:
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(torch.empty((), dtype=torch_dtype).numpy().dtype)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch
  tensor = tensor.detach().contiguous()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().copy().view(ml_dtypes.bfloat16)
  return tensor.numpy().copy()


# Writing ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorSpec:
  name: str
  dtype: np.dtype
  shape: tuple[int, ...]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def write_safetensors(path: str, specs: list[TensorSpec], produce: Callable[[str], np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
  """Writes `specs` in order, asking `produce(name)` for each tensor's data."""
  header: dict = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  for spec in specs:
    header[spec.name] = {"dtype": _SAFETENSORS_NAMES[spec.dtype], "shape": list(spec.shape),
                         "data_offsets": [offset, offset + spec.nbytes]}
    offset += spec.nbytes
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)  # the format aligns data to 8 bytes
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
    for spec in specs:
      array = np.ascontiguousarray(produce(spec.name), dtype=spec.dtype)
      if array.shape != spec.shape:
        raise ValueError(f"{spec.name}: produced shape {array.shape}, declared {spec.shape}")
      f.write(array.reshape(-1).view(np.uint8).data)


def shard_specs(specs: Iterable[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
  """Splits tensors, in order, into shards of at most max_shard_bytes (one tensor may exceed it)."""
  shards: list[list[TensorSpec]] = [[]]
  size = 0
  for spec in specs:
    if shards[-1] and size + spec.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(spec)
    size += spec.nbytes
  return shards


def write_sharded_safetensors(folder: str, specs: list[TensorSpec],
                              produce: Callable[[str], np.ndarray], max_shard_bytes: int) -> list[str]:
  """One model.safetensors, or numbered shards plus model.safetensors.index.json."""
  shards = shard_specs(specs, max_shard_bytes)
  if len(shards) == 1:
    write_safetensors(os.path.join(folder, SAFE_SINGLE), shards[0], produce)
    return [SAFE_SINGLE]
  names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map = {}
  for file_name, shard in zip(names, shards):
    write_safetensors(os.path.join(folder, file_name), shard, produce)
    weight_map.update({spec.name: file_name for spec in shard})
  index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
  with open(os.path.join(folder, SAFE_INDEX), "w") as f:
    json.dump(index, f, indent=2)
  return names + [SAFE_INDEX]
