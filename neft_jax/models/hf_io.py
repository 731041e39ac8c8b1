"""Load a Hugging Face checkpoint into the decoder, and save one back.

`load_hf` streams: it checks every name, shape and dtype from the file headers
first, then reads one parameter at a time (all layers of a stacked parameter
straight into one host buffer) and places it onto its devices, each device
receiving only its shard. At most one parameter is on the host beyond those
already placed, so peak host memory stays near the size of the parameters.

`save_hf` writes config.json and safetensors (sharded above `max_shard_size`)
that `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import concurrent.futures
import json
import mmap
import os
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, Sharding

from neft_jax import sharding as sharding_lib
from neft_jax.errors import UserError
from neft_jax.hub import is_hub_id
from neft_jax.models import adapters, gpt2, llama, lora, qwen2
from neft_jax.models.config import OPTION_NAMES, ModelConfig, dtype_name
from neft_jax.models.mapping import HFConfig, HFTensor
from neft_jax.models.transformer import Transformer
from neft_jax.models.weight_files import TensorSpec, WeightFiles, write_sharded_safetensors

FAMILIES = {family.MODEL_TYPE: family for family in (gpt2, llama, qwen2)}
CONFIG_FILE = "config.json"
# Checkpoint dtypes that convert to a float parameter without loss of meaning.
_CASTABLE = tuple(np.dtype(d) for d in (np.float16, jnp.bfloat16, np.float32, np.float64))


# Reading the config --------------------------------------------------------------

def resolve_checkpoint(path: str, *, weights: bool = True) -> str:
  """A local folder, or a hub id downloaded (config and weights only, or with
  weights=False the config alone) into the Hugging Face cache."""
  path = os.fspath(path)
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    raise UserError(f"{path} is a file; give the folder that holds config.json and the weights")
  if not is_hub_id(path):
    raise UserError(f"{path} does not exist; give a local checkpoint folder or a hub id like 'gpt2'")
  try:
    import huggingface_hub
    if not weights:
      return huggingface_hub.snapshot_download(path, allow_patterns=[CONFIG_FILE])
    folder = huggingface_hub.snapshot_download(
        path, allow_patterns=[CONFIG_FILE, "*.safetensors", "*.safetensors.index.json"])
    if not any(f.endswith(".safetensors") for f in os.listdir(folder)):
      folder = huggingface_hub.snapshot_download(
          path, allow_patterns=[CONFIG_FILE, "pytorch_model*.bin", "pytorch_model.bin.index.json"])
    return folder
  except Exception as e:  # no network, no such repo, no access: all are the user's to fix
    reason = str(e).splitlines()[0] if str(e) else ""
    raise UserError(f"{path} is not a local folder and could not be fetched from the Hugging Face "
                    f"hub ({type(e).__name__}: {reason}); give a local checkpoint folder") from None


def read_config(folder: str) -> ModelConfig:
  """The ModelConfig of a checkpoint folder, from its config.json."""
  config_path = os.path.join(folder, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise UserError(f"{folder} has no {CONFIG_FILE}; a Hugging Face checkpoint folder needs one")
  try:
    with open(config_path) as f:
      values = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{config_path} is not valid JSON: {e}") from None
  model_type = values.get("model_type")
  if model_type not in FAMILIES:
    raise UserError(f"{config_path}: model_type {model_type!r} is not supported; "
                    f"neft_jax supports {sorted(FAMILIES)}")
  return FAMILIES[model_type].config_from_hf(HFConfig(values, config_path))


def model_config(path: str, options, *, weights: bool = True) -> ModelConfig:
  """A checkpoint's ModelConfig (folder or hub id) with the run options of
  `options`, a mapping such as a config's `model` section (its other keys,
  like `path`, are ignored; `lora` with rank > 0 adds the adapters). With
  weights=False a hub id fetches config.json only."""
  folder = resolve_checkpoint(path, weights=weights)
  cfg = read_config(folder).with_options(**{k: options[k] for k in OPTION_NAMES if k in options})
  # model.lora: the adapters, and the frozen base in model.lora.base_dtype.
  return cfg.with_options(**lora.model_options(options.get("lora"), cfg.mlp, cfg.family))


# Loading ------------------------------------------------------------------------

def abstract_model(cfg: ModelConfig):
  """(graphdef, abstract state) of the decoder: shapes, dtypes and logical axes, no memory."""
  return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def abstract_trainable(cfg: ModelConfig):
  """(graphdef, trainable, frozen) abstract states: with LoRA (cfg.lora_rank > 0) the
  adapters and the frozen base, else every parameter and None."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  if cfg.lora_rank:
    return nnx.split(model, lora.LoRAParam, ...)
  graphdef, state = nnx.split(model)
  return graphdef, state, None


def _path_name(path) -> str:
  return ".".join(str(p) for p in path)


def _resolve_names(tensors: Sequence[HFTensor], cfg: ModelConfig, infos, base_prefix: str):
  """Expected HF name -> name in the file (which may lack the base-model prefix)."""
  resolved = {}
  for tensor in tensors:
    for layer in range(cfg.num_layers) if tensor.per_layer else [None]:
      name = tensor.hf_name(layer)
      if name not in infos and name.startswith(base_prefix) and name[len(base_prefix):] in infos:
        resolved[name] = name[len(base_prefix):]
      else:
        resolved[name] = name
  return resolved


def _check_checkpoint(files: WeightFiles, family, cfg: ModelConfig, tensors, shapes, resolved):
  """Names, shapes and dtypes, all checked before any data is read."""
  where = files.folder
  missing = [name for name, file_name in resolved.items() if file_name not in files.infos]
  if missing:
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise UserError(f"{where}: tensor(s) missing from the checkpoint: {missing[:5]}{more}")
  ignored = [re.compile(p) for p in family.IGNORED]
  if cfg.tie_embeddings:
    ignored.append(re.compile(r"lm_head\.weight"))
  used = set(resolved.values())
  unexpected = [n for n in files.infos if n not in used and not any(p.fullmatch(n) for p in ignored)]
  if unexpected:
    more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
    raise UserError(f"{where}: unexpected tensor(s) for a {cfg.family} model with this config: "
                    f"{unexpected[:5]}{more}")
  for tensor in tensors:
    per_layer = [shapes[p][1:] if tensor.per_layer else shapes[p] for p in tensor.params]
    expected = tensor.hf_shape(per_layer)
    for layer in range(cfg.num_layers) if tensor.per_layer else [None]:
      info = files.infos[resolved[tensor.hf_name(layer)]]
      if info.shape != expected:
        raise UserError(f"{where}: tensor {tensor.hf_name(layer)!r} has shape {list(info.shape)}, "
                        f"but config.json implies {list(expected)}")
      if info.dtype not in _CASTABLE:
        raise UserError(f"{where}: tensor {tensor.hf_name(layer)!r} has dtype {info.dtype}, which "
                        "cannot be cast to a float parameter (quantized checkpoints are not supported)")


def _place(array: np.ndarray, sharding: Sharding) -> jax.Array:
  """Puts a host array on devices; each device copies only its own shard.

  The array is made read-only first, which lets a CPU device adopt the buffer
  instead of copying it.
  """
  array.flags.writeable = False
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _host_buffer(shape, dtype) -> np.ndarray:
  """An uninitialised, page-aligned host array.

  Page alignment lets a CPU device adopt the buffer without a copy (numpy's
  own allocations are only 16-byte aligned, and XLA then copies).
  """
  dtype = np.dtype(dtype)
  count = int(np.prod(shape, dtype=np.int64))
  memory = mmap.mmap(-1, max(count * dtype.itemsize, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
  _touch_pages(np.frombuffer(memory, np.uint8))
  return np.frombuffer(memory, dtype, count=count).reshape(shape)


def _touch_pages(data: np.ndarray, chunk: int = 64 << 20) -> None:
  """Faults in every page of fresh memory, on all cores.

  First touches dominate the load time of a large checkpoint (a virtual
  machine may back each page only then); numpy writes release the GIL, so
  threads fault disjoint chunks in parallel.
  """
  page = mmap.PAGESIZE
  starts = range(0, data.size, chunk)

  def touch(start):
    data[start:start + chunk:page] = 0

  if len(starts) == 1:
    touch(0)
    return
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    list(pool.map(touch, starts))


def _read_parameters(files: WeightFiles, tensor: HFTensor, resolved, shapes, num_layers, dtype):
  """Host arrays of the parameters one HF tensor fills (all layers, for a per-layer tensor)."""
  buffers = [_host_buffer(shapes[p], dtype) for p in tensor.params]
  layers = range(num_layers) if tensor.per_layer else [None]
  # The common case (one parameter, same dtype, no transpose) reads straight into place.
  direct = len(tensor.params) == 1 and not tensor.transpose
  for layer in layers:
    name = resolved[tensor.hf_name(layer)]
    targets = [b if layer is None else b[layer] for b in buffers]
    if direct and files.infos[name].dtype == dtype:
      files.read(name, out=targets[0])
      continue
    host = files.read(name).astype(dtype, copy=False)
    for target, part in zip(targets, tensor.to_params(host, [t.shape for t in targets])):
      target[...] = part
  return buffers


def load_hf(path: str, *, param_dtype="float32", dtype=None, mesh: Mesh | None = None,
            rules: sharding_lib.Rules | None = None, sharding: Sharding | None = None,
            lora_seed: int = 0, **options) -> Transformer:
  """The NNX decoder with a Hugging Face checkpoint's weights.

  Args:
    path: a checkpoint folder (config.json plus safetensors or
      pytorch_model.bin, single or sharded) or a hub id.
    param_dtype: dtype the parameters are stored in ("float32", "bfloat16").
    dtype: compute dtype; defaults to param_dtype.
    mesh, rules: place every parameter by its logical axes (rules default to
      `neft_jax.sharding.DEFAULT_RULES`); each device receives only its shard.
    sharding: alternatively, one Sharding for every parameter.
    lora_seed: with options lora_rank > 0 (and lora_targets), the seed of the fresh
      adapters' A (`neft_jax.models.adapters.init_adapters`).
    **options: other model options (scan_layers, remat, attention, lora_*).
  """
  folder = resolve_checkpoint(path)
  family_cfg = read_config(folder)
  cfg = family_cfg.with_options(param_dtype=dtype_name(param_dtype),
                                dtype=dtype_name(dtype if dtype is not None else param_dtype), **options)
  family = FAMILIES[cfg.family]
  graphdef, abstract_state = abstract_model(cfg)
  if mesh is not None:
    shardings = sharding_lib.tree_shardings(abstract_state, mesh, rules or sharding_lib.DEFAULT_RULES)
  else:
    single = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: single, abstract_state)
  flat_abstract = {_path_name(p): v for p, v in nnx.to_flat_state(abstract_state)}
  flat_sharding = {_path_name(p): v.get_value() for p, v in nnx.to_flat_state(shardings)}
  shapes = {name: v.get_value().shape for name, v in flat_abstract.items()}
  target_dtype = cfg.param_jnp_dtype

  tensors = family.tensors(cfg)
  with WeightFiles(folder) as files:
    resolved = _resolve_names(tensors, cfg, files.infos, family.BASE_PREFIX)
    _check_checkpoint(files, family, cfg, tensors, shapes, resolved)
    values: dict[str, jax.Array] = {}
    for tensor in tensors:
      buffers = _read_parameters(files, tensor, resolved, shapes, cfg.num_layers, target_dtype)
      for name, buffer in zip(tensor.params, buffers):
        values[name] = _place(buffer, flat_sharding[name])
      del buffers
      # Wait for the copies, so host buffers never pile up behind the devices.
      jax.block_until_ready([values[name] for name in tensor.params])

  adapter_names = {name for name, v in flat_abstract.items() if isinstance(v, lora.LoRAParam)}
  if adapter_names:  # LoRA: fresh adapters (A Kaiming-uniform, B zeros), not in the checkpoint
    adapter_shardings = nnx.state(shardings, lora.LoRAParam)
    values |= {name: value for name, value in adapters.flat(adapters.init_adapters(
        cfg, lora_seed, adapter_shardings)).items()}
  not_loaded = sorted(set(flat_abstract) - set(values))
  if not_loaded:  # a mapping bug, not a user error
    raise AssertionError(f"{cfg.family} mapping does not fill parameters {not_loaded}")
  state = nnx.from_flat_state(
      [(p, v.replace(values[_path_name(p)])) for p, v in nnx.to_flat_state(abstract_state)])
  return nnx.merge(graphdef, state)


# Saving -------------------------------------------------------------------------

def _to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def parse_size(size: int | str) -> int:
  """Bytes from 5_000_000_000 or '5GB' / '500MB' (decimal units, as Hugging Face uses)."""
  if isinstance(size, int):
    return size
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*", size.upper().replace("IB", "iB"))
  if not match:
    raise UserError(f"max_shard_size={size!r} is not a size like '5GB' or '500MB'")
  units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
           "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
  return int(float(match.group(1)) * units[match.group(2)])


def save_hf(model: Transformer, out_dir: str, *, dtype=None, max_shard_size: int | str = "5GB") -> list[str]:
  """Writes config.json and safetensors weights that transformers loads.

  Every process must call it (parameters are gathered collectively); only
  process 0 writes. Weights are stored in `dtype` (default: the parameter
  dtype). Returns the names of the files written.
  """
  cfg: ModelConfig = model.config
  family = FAMILIES[cfg.family]
  save_dtype = np.dtype(jnp.dtype(dtype if dtype is not None else cfg.param_jnp_dtype))
  flat = {_path_name(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  jobs: dict[str, tuple[HFTensor, int | None]] = {}
  specs = []
  for tensor in family.tensors(cfg):
    per_layer = [flat[p].shape[1:] if tensor.per_layer else flat[p].shape for p in tensor.params]
    for layer in range(cfg.num_layers) if tensor.per_layer else [None]:
      jobs[tensor.hf_name(layer)] = (tensor, layer)
      specs.append(TensorSpec(tensor.hf_name(layer), save_dtype, tensor.hf_shape(per_layer)))

  def produce(name: str) -> np.ndarray:
    tensor, layer = jobs[name]
    arrays = [_to_host(flat[p] if layer is None else flat[p][layer]) for p in tensor.params]
    return tensor.from_params(arrays).astype(save_dtype)

  is_writer = jax.process_index() == 0
  if is_writer:
    os.makedirs(out_dir, exist_ok=True)
    hf_config = family.config_to_hf(cfg) | {"dtype": save_dtype.name}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
      json.dump(hf_config, f, indent=2)
    written = write_sharded_safetensors(out_dir, specs, produce, parse_size(max_shard_size))
  else:
    for spec in specs:  # take part in the same gathers as process 0
      produce(spec.name)
    written = []
  return ["config.json"] + written
