"""LoRA adapters in and out of the decoder: fresh ones, PEFT's files, merged weights.

    init_adapters(cfg, seed)          fresh A (Kaiming-uniform) and B (zeros) for every target
    peft_tensors(model)               {PEFT tensor name: array}, as adapter_model.safetensors holds
    adapter_config(model, base)       adapter_config.json's fields
    save_peft(model, out_dir, base)   both files: `peft.PeftModel.from_pretrained(base, out_dir)`
    read_peft(folder, cfg)            {our LoRA parameter path: [layers, ...] array}
    merged(model)                     the same model without adapters, B A merged into W

PEFT names a factor after the Hugging Face module it adapts:
`base_model.model.<module>.lora_A.weight` [r, in] and `....lora_B.weight` [out, r],
in the module's own [out, in] orientation even for GPT-2's Conv1D (which stores W
as [in, out]; PEFT then says `fan_in_fan_out: true`). Our factors are the kernel's
axes with the rank added (`neft_jax.models.lora`), so a factor is PEFT's after a
reshape. GPT-2's query, key and value are one `c_attn` module: its adapter is the
rank-3r one whose A stacks the three A's and whose B is block-diagonal, with
`rank_pattern` and `alpha_pattern` giving c_attn 3r and 3 alpha, so that its scale
alpha / r is the others'. Reading one back takes the diagonal blocks; an adapter
made by PEFT itself on c_attn with rank r (one A shared by q, k and v) is read
as that A on each of the three.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from neft_jax.errors import UserError
from neft_jax.models import lora
from neft_jax.models.config import ModelConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def _families():
  from neft_jax.models import gpt2, llama, qwen2
  return {"gpt2": gpt2, "llama": llama, "qwen2": qwen2}


def _path(name: str) -> str:
  """Our parameter path of a projection: "layers.attn.query"."""
  return f"layers.{'attn' if name in lora.ATTENTION else 'mlp'}.{name}"


def modules(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...]]]:
  """[(HF module name with "{layer}", (our projections it holds, in order))] for the
  modules that hold a LoRA target."""
  out = []
  for tensor in _families()[cfg.family].tensors(cfg):
    projections = tuple(p.split(".")[-2] for p in tensor.params
                        if p.endswith(".kernel") and p.startswith("layers."))
    if projections and any(p in cfg.lora_targets for p in projections):
      out.append((tensor.name.removesuffix(".weight"), projections))
  return out


def init_adapters(cfg: ModelConfig, seed: int, shardings=None) -> nnx.State:
  """Fresh adapters of a model with `cfg`: the LoRAParams of `Transformer(cfg, Rngs(seed))`,
  computed alone (XLA drops the base weights' initialization, which nothing uses)."""
  from neft_jax.models.transformer import Transformer

  def make():
    return nnx.state(Transformer(cfg, rngs=nnx.Rngs(seed)), lora.LoRAParam)

  return jax.jit(make, out_shardings=shardings)()


def _dotted(path) -> str:
  return ".".join(str(k) for k in path)


def flat(state) -> dict[str, jax.Array]:
  """{dotted path: value} of every variable of `state`."""
  return {_dotted(path): v.get_value() for path, v in nnx.to_flat_state(state)}


def unflat(values: dict, like: nnx.State) -> nnx.State:
  """`like` with each variable's value from `values` (keyed as `flat` keys them)."""
  return nnx.from_flat_state([(path, v.replace(values[_dotted(path)]))
                              for path, v in nnx.to_flat_state(like)])


def _host(x) -> np.ndarray:
  from neft_jax.models.hf_io import _to_host
  return _to_host(x)


def peft_tensors(model) -> dict[str, np.ndarray]:
  """Every factor under PEFT's name, float32, [r, in] and [out, r] per layer."""
  cfg: ModelConfig = model.config
  factors = {k: _host(v).astype(np.float32)
             for k, v in flat(nnx.state(model, lora.LoRAParam)).items()}
  r = cfg.lora_rank
  out = {}
  for module, projections in modules(cfg):
    for layer in range(cfg.num_layers):
      a_parts, b_parts = [], []
      for name in projections:
        if name in cfg.lora_targets:
          a = factors[f"{_path(name)}.lora_a"][layer].reshape(r, -1)
          b = factors[f"{_path(name)}.lora_b"][layer].reshape(-1, r)
        else:  # a member of a fused module that is not a target: a zero block
          other = next(p for p in projections if p in cfg.lora_targets)
          a = np.zeros_like(factors[f"{_path(other)}.lora_a"][layer].reshape(r, -1))
          b = np.zeros((_out_size(cfg, name), r), np.float32)
        a_parts.append(a)
        b_parts.append(b)
      b = b_parts[0] if len(b_parts) == 1 else _block_diagonal(b_parts)
      name = PREFIX + module.replace("{layer}", str(layer))
      out[f"{name}.lora_A.weight"] = np.concatenate(a_parts, axis=0)
      out[f"{name}.lora_B.weight"] = b
  return out


def _out_size(cfg: ModelConfig, name: str) -> int:
  sizes = {"query": cfg.num_heads * cfg.head_dim, "key": cfg.num_kv_heads * cfg.head_dim,
           "value": cfg.num_kv_heads * cfg.head_dim, "out": cfg.embed_dim, "gate": cfg.mlp_dim,
           "up": cfg.mlp_dim, "down": cfg.embed_dim}
  return sizes[name]


def _block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
  rows, columns = sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)
  out = np.zeros((rows, columns), np.float32)
  row = column = 0
  for block in blocks:
    out[row:row + block.shape[0], column:column + block.shape[1]] = block
    row, column = row + block.shape[0], column + block.shape[1]
  return out


def _suffix(module: str) -> str:
  """The module's name after the layer index: "self_attn.q_proj", "attn.c_attn"."""
  return module.split("{layer}.", 1)[1]


def adapter_config(cfg: ModelConfig, base: str, dropout: float = 0.0) -> dict:
  """adapter_config.json for `cfg`'s adapters on the model at `base` (a folder or hub id)."""
  mods = modules(cfg)
  fused = {_suffix(m): len(p) for m, p in mods if len(p) > 1}
  return {
      "peft_type": "LORA",
      "task_type": "CAUSAL_LM",
      "base_model_name_or_path": base,
      "r": cfg.lora_rank,
      "lora_alpha": cfg.lora_alpha,
      "lora_dropout": dropout,
      "target_modules": sorted({_suffix(m) for m, _ in mods}),
      "rank_pattern": {name: n * cfg.lora_rank for name, n in fused.items()},
      "alpha_pattern": {name: n * cfg.lora_alpha for name, n in fused.items()},
      "fan_in_fan_out": cfg.family == "gpt2",  # GPT-2's Conv1D stores W as [in, out]
      "bias": "none",
      "use_rslora": False,
      "use_dora": False,
      "init_lora_weights": True,
      "inference_mode": True,
      "modules_to_save": None,
      "layers_to_transform": None,
  }


def save_peft(model, out_dir: str, base: str, dropout: float = 0.0) -> list[str]:
  """adapter_config.json and adapter_model.safetensors in `out_dir` (process 0 writes;
  every process must call it, for the gathers)."""
  from safetensors.numpy import save_file
  tensors = peft_tensors(model)
  if jax.process_index() != 0:
    return []
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(adapter_config(model.config, base, dropout), f, indent=2)
  save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
  return [CONFIG_FILE, WEIGHTS_FILE]


def read_peft(folder: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """A PEFT LoRA adapter as our factors {path: [layers, ...]} for a model with `cfg`
  (its rank, alpha and targets); a mismatch is a UserError naming it."""
  from safetensors.numpy import load_file
  config_path, weights_path = (os.path.join(folder, f) for f in (CONFIG_FILE, WEIGHTS_FILE))
  for path in (config_path, weights_path):
    if not os.path.exists(path):
      raise UserError(f"model.lora.init_from={folder}: {os.path.basename(path)} is missing; give "
                      "a folder that PEFT's save_pretrained wrote")
  with open(config_path, encoding="utf-8") as f:
    peft_config = json.load(f)
  if peft_config.get("peft_type") != "LORA":
    raise UserError(f"{config_path}: peft_type={peft_config.get('peft_type')!r}; only LoRA "
                    "adapters can be read")
  for key in ("use_dora", "use_rslora"):
    if peft_config.get(key):
      raise UserError(f"{config_path}: {key}=true is not supported; use a plain LoRA adapter")
  tensors = load_file(weights_path)
  r = cfg.lora_rank
  wanted = modules(cfg)
  found_modules = {name.removeprefix(PREFIX).rsplit(".lora_", 1)[0] for name in tensors}
  expected_modules = {m.replace("{layer}", str(layer)) for m, _ in wanted
                      for layer in range(cfg.num_layers)}
  extra, missing = sorted(found_modules - expected_modules), sorted(expected_modules - found_modules)
  if extra or missing:
    raise UserError(f"{weights_path} adapts other modules than model.lora.targets="
                    f"{','.join(cfg.lora_targets)} on this model: "
                    + "; ".join(part for part in (
                        f"not in the model's targets: {', '.join(extra[:4])}" if extra else "",
                        f"missing: {', '.join(missing[:4])}" if missing else "") if part)
                    + " (set model.lora.targets to match the adapter)")
  out: dict[str, list[np.ndarray]] = {}
  for module, projections in wanted:
    suffix = _suffix(module)
    module_rank = _pattern(peft_config.get("rank_pattern"), suffix, peft_config.get("r"))
    module_alpha = _pattern(peft_config.get("alpha_pattern"), suffix, peft_config.get("lora_alpha"))
    # PEFT's scale of this module over ours: B is rescaled so that the product is the same.
    rescale = (module_alpha / module_rank) / (cfg.lora_alpha / r)
    for layer in range(cfg.num_layers):
      name = PREFIX + module.replace("{layer}", str(layer))
      a, b = tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"]
      sizes = [_out_size(cfg, p) for p in projections]
      if b.shape[0] != sum(sizes) or a.shape[0] != b.shape[1]:
        raise UserError(f"{weights_path}: {name} has lora_A {tuple(a.shape)} and lora_B "
                        f"{tuple(b.shape)}, which do not fit this model's {suffix} "
                        f"(out {sum(sizes)}); is the adapter for another base model?")
      parts = _split(a, b, sizes, r, name, weights_path)
      for projection, (a_part, b_part) in zip(projections, parts):
        if projection not in cfg.lora_targets:
          continue
        out.setdefault(f"{_path(projection)}.lora_a", []).append(a_part)
        out.setdefault(f"{_path(projection)}.lora_b", []).append(b_part * rescale)
  return {path: np.stack(layers) for path, layers in out.items()}


def _pattern(pattern, suffix: str, default):
  import re
  for key, value in (pattern or {}).items():
    if re.match(rf"(.*\.)?({key})$", suffix):
      return value
  return default


def _split(a: np.ndarray, b: np.ndarray, sizes: list[int], r: int, name: str, where: str):
  """One module's (A [R, in], B [sum(out), R]) as (A, B) pairs of rank r per projection."""
  rows = np.split(b, np.cumsum(sizes)[:-1], axis=0)
  if a.shape[0] == r:  # one A for every projection of the module (PEFT's own layout)
    return [(a, rows_i) for rows_i in rows]
  if a.shape[0] == r * len(sizes):  # our export: A stacked, B block-diagonal
    parts = []
    for k, rows_i in enumerate(rows):
      block = rows_i[:, k * r:(k + 1) * r]
      off_diagonal = np.delete(rows_i, np.s_[k * r:(k + 1) * r], axis=1)
      if np.any(off_diagonal):
        raise UserError(f"{where}: {name}'s lora_B is not block-diagonal, so its rank "
                        f"{a.shape[0]} cannot be read as rank {r} per projection; set "
                        f"model.lora.rank={a.shape[0]}")
      parts.append((a[k * r:(k + 1) * r], block))
    return parts
  raise UserError(f"{where}: {name} has rank {a.shape[0]} but model.lora.rank={r}; set "
                  f"model.lora.rank={a.shape[0]}")


def reshape_like(factors: dict[str, np.ndarray], state: nnx.State) -> dict[str, np.ndarray]:
  """PEFT-shaped factors [layers, r, in] / [layers, out, r] in our factor shapes."""
  shapes = {k: v.shape for k, v in flat(state).items()}
  missing = sorted(set(shapes) - set(factors))
  if missing:
    raise UserError(f"the adapter has no factors for {', '.join(missing[:4])}")
  return {k: factors[k].reshape(shapes[k]) for k in shapes}


def merged(model):
  """The model with every B A merged into its kernel (scaled by alpha / r) and no
  adapters: what transformers loads as a plain checkpoint."""
  import dataclasses
  from neft_jax.models.transformer import Transformer
  cfg: ModelConfig = model.config
  plain_cfg = dataclasses.replace(cfg, lora_rank=0, lora_targets=())
  params = flat(nnx.state(model, nnx.Param))
  scale = cfg.lora_alpha / cfg.lora_rank
  for name in cfg.lora_targets:
    path = _path(name)
    equation = getattr(getattr(model.layers, path.split(".")[1]), name).equation
    *_, merge = lora.einsum_equations(equation)
    b_axes, rest = merge.split(",")
    a_axes, k_axes = rest.split("->")
    kernel = params[f"{path}.kernel"]
    update = jnp.einsum(f"L{b_axes},L{a_axes}->L{k_axes}", params[f"{path}.lora_b"].astype(jnp.float32),
                        params[f"{path}.lora_a"].astype(jnp.float32))
    params[f"{path}.kernel"] = (kernel.astype(jnp.float32) + scale * update).astype(kernel.dtype)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(plain_cfg, rngs=nnx.Rngs(0))))
  return nnx.merge(graphdef, unflat(params, abstract))

