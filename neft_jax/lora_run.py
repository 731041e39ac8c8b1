"""A LoRA run's base model: loaded frozen, split from its adapters, checked on resume.

With model.lora.rank > 0 a run's checkpoints hold only the adapters and their
optimizer state. The base is loaded from model.path at every start, in
model.lora.base_dtype, sharded like the full model, and never trained:

    frozen, adapters = load(config, model_config, model_path, mesh, rules)

The first start writes WORKDIR/lora_base.json: the base's path, the sha256 of its
config.json and a content checksum of its weight files (sha256 over each file's
bytes, in name order). A resumed run, or evaluate, analyze and export reading
the run, compare the base they load with it (`check_base`), so adapters never
land on another model by accident.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
from flax import nnx

from neft_jax import run
from neft_jax.errors import UserError
from neft_jax.models import adapters as adapter_io
from neft_jax.models import hf_io, load_hf, lora
from neft_jax.models.weight_files import weight_file_names
from neft_jax.provenance import file_sha256

log = logging.getLogger(__name__)

BASE_FILE = "lora_base.json"


def fingerprint(model_path: str) -> dict:
  """{path, config_sha256, weights_sha256} of a base model folder (or hub id, resolved)."""
  folder = hf_io.resolve_checkpoint(model_path)
  names = weight_file_names(folder)
  weights = hashlib.sha256()
  for name in names:
    weights.update(name.encode() + b"\0" + file_sha256(os.path.join(folder, name)).encode())
  return {"path": model_path,
          "config_sha256": file_sha256(os.path.join(folder, hf_io.CONFIG_FILE)),
          "weights_sha256": weights.hexdigest(), "files": names}


def write_base(workdir, model_path: str) -> None:
  (run.folder(workdir) / BASE_FILE).write_text(json.dumps(fingerprint(model_path), indent=1))


def check_base(workdir, model_path: str) -> None:
  """A UserError if the base at model_path is not the one the run was trained on."""
  path = run.folder(workdir) / BASE_FILE
  if not path.exists():
    raise UserError(f"{path} is missing, so the LoRA run's base cannot be checked; it is written "
                    "at a run's first start (was the run made with model.lora.rank=0?)")
  saved, now = json.loads(path.read_text()), fingerprint(model_path)
  for key, what in (("config_sha256", "config.json"), ("weights_sha256", "weights")):
    if saved[key] != now[key]:
      raise UserError(f"model.path={model_path} holds another base model than the LoRA run in "
                      f"{run.folder(workdir)} was trained on (its {what} differ from "
                      f"{saved['path']}'s, {BASE_FILE}); point model.path at that base")


def load(config, model_config, model_path: str, mesh, rules, *, fresh: bool = True):
  """(frozen base parameters, adapters): the base from model_path with fresh adapters
  (model.lora.init_seed, -1 for the run's seed), or model.lora.init_from's PEFT adapter.
  `fresh=False` where a checkpoint's adapters replace them (resume, evaluate): init_from
  is then not read, so it need not exist any more."""
  section = config.model.lora
  seed = config.seed if section.init_seed == -1 else section.init_seed
  model = load_hf(model_path, mesh=mesh, rules=rules, param_dtype=model_config.param_dtype,
                  dtype=model_config.dtype, scan_layers=model_config.scan_layers,
                  remat=model_config.remat, attention=model_config.attention,
                  lora_rank=model_config.lora_rank, lora_alpha=model_config.lora_alpha,
                  lora_targets=model_config.lora_targets, lora_seed=seed)
  if section.init_from and fresh:
    state = nnx.state(model, lora.LoRAParam)
    factors = adapter_io.reshape_like(adapter_io.read_peft(section.init_from, model.config), state)
    placed = {name: jax.device_put(factors[name].astype(value.dtype), value.sharding)
              for name, value in adapter_io.flat(state).items()}
    nnx.update(model, adapter_io.unflat(placed, state))
    log.info("LoRA: adapters from %s", section.init_from)
  _, trainable, frozen = nnx.split(model, lora.LoRAParam, ...)
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
  log.info("LoRA: rank %d, alpha %g on %s; %d adapter parameters train, %d base parameters "
           "frozen in %s", model_config.lora_rank, model_config.lora_alpha,
           ",".join(model_config.lora_targets), count(trainable), count(frozen),
           model_config.param_dtype)
  return frozen, trainable

