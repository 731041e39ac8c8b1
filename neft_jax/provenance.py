"""provenance.json: what made an output folder, so a result can be traced and rerun.

    collect(config, workdir=, mesh=, inputs=, models=, data=)   the record, as a dict
    write(folder, record)                                      folder/provenance.json
    read(workdir)                                              a folder's record, or None
    file_sha256(path)                                          a file's content hash

Training writes the record into its workdir beside config.json, at every start
(a resumed run replaces it); evaluate and analyze into their output folder,
with the records of the run workdirs they read under "inputs"; a study into
its folder, with its base config (study.json holds the grid; every cell's
workdir has its own record). The record holds:

  written_at, command, cwd   when, sys.argv and the working directory
  git         {commit, dirty} of the checkout the package was imported from (found
              from the package's folder, not the cwd); dirty counts changes to
              tracked files only. Nulls outside a checkout (an installed package,
              no git).
  versions    jax, jaxlib, flax, optax, orbax-checkpoint, grain, transformers,
              tokenizers, datasets, safetensors, huggingface_hub, numpy,
              ml_collections, torch, peft (null where not installed) and python
  devices     platform, device kind and count, process count; mesh: axis -> size
  config      the resolved config, as config.json holds it
  data        per config key (data.path, data.eval_path, data.test_path,
              data.exclude) or flag (--prompts, --probe): {file: sha256} of the
              local file, or of every file under the folder; {"hub": id} for a
              hub dataset; null for what is neither
  models      per model path (model.path, or the --model / --base / --tuned
              folders): the sha256 of config.json, `index_sha256` (of the
              safetensors or bin index file, or of a single safetensors file's
              header: its tensor names, dtypes, shapes and offsets) and every
              weight file's size in bytes. For a hub id: the id and, where the
              Hugging Face cache holds it (looked up offline), its revision and
              the same hashes of the cached snapshot.
  inputs      {run workdir: its provenance.json's record, or null}

The weight files themselves are not hashed: that is reading the whole model (13
GB for a 7B model in bfloat16; tens of seconds to minutes per start, from a
network disk more) at every run, evaluation, analysis and study cell. The
index, the header and the sizes change with any re-export, re-sharding or
other dtype; a LoRA run's lora_base.json (`neft_jax.lora_run`) holds the full
content hash of its base, which the run checks.

Nothing here fails a run: a piece that cannot be determined is null (with a
warning in the log), and a record that cannot be written is a warning.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys

import jax

from neft_jax import run
from neft_jax.config_check import names
from neft_jax.hub import is_hub_id
from neft_jax.models import hf_io, weight_files

log = logging.getLogger(__name__)

FILE = "provenance.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "transformers",
            "tokenizers", "datasets", "safetensors", "huggingface_hub", "numpy", "ml_collections",
            "torch", "peft")
DATA_KEYS = ("path", "eval_path", "test_path")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
GIT_TIMEOUT_S = 20


def collect(config, *, workdir=None, mesh=None, inputs=(), models=None, data=None) -> dict:
  """The record of a command (see the module's doc).

  config: its ConfigDict; workdir: what `{workdir}` in its paths stands for; mesh:
  the command's mesh, if it has one; inputs: the run workdirs it read (None is left
  out); models: the model paths it read (default: model.path); data: {flag: path}
  of files it read besides the config's data (a None or empty path is left out).
  """
  fill = (lambda path: run.resolve(path, workdir)) if workdir is not None else (lambda path: path)
  if models is None:
    models = _safely("model.path", lambda: [fill(config.model.path)] if config.model.path else [])
  return {
      "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": list(sys.argv),
      "cwd": _safely("the working directory", os.getcwd),
      "git": _safely("the git checkout", git_state) or {"commit": None, "dirty": None},
      "versions": _safely("the package versions", versions),
      "devices": _safely("the devices", devices),
      "mesh": _safely("the mesh", lambda: None if mesh is None else
                      {str(name): int(size) for name, size in mesh.shape.items()}),
      "config": _safely("the config", lambda: json.loads(config.to_json_best_effort())),
      "data": _safely("the data hashes", lambda: data_hashes(config, fill, data or {})),
      "models": {str(path): _safely(f"the model at {path}", model_fingerprint, str(path))
                 for path in models or ()},
      "inputs": {str(workdir): read(workdir) for workdir in inputs if workdir is not None},
  }


def write(folder, record: dict) -> None:
  """folder/provenance.json (a local folder or a bucket), written whole or not at all (the
  tasks of a study's array job share its folder); a failure is a warning."""
  try:
    path = run.folder(folder) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f"{FILE}.partial{os.getpid()}"
    partial.write_text(json.dumps(record, indent=1, ensure_ascii=False, default=str) + "\n")
    partial.replace(path)
  except Exception as e:  # noqa: BLE001 -- the record never stops the command
    log.warning("could not write %s into %s (%s: %s); the command goes on without it", FILE,
                folder, type(e).__name__, e)


def read(workdir) -> dict | None:
  """The record in workdir/provenance.json, or None if it has none (or an unreadable one)."""
  try:
    return json.loads((run.folder(workdir) / FILE).read_text())
  except Exception:  # noqa: BLE001 -- a run from before provenance.json, or a broken file
    return None


# The pieces ---------------------------------------------------------------------------------

def git_state(package_dir: str = PACKAGE_DIR) -> dict:
  """{"commit": 40 hex digits, "dirty": bool} of the checkout whose tracked files hold
  package_dir; nulls when it is not in one (an installed copy) or git is missing."""
  root, name = os.path.split(package_dir)
  if _git(root, "ls-files", "--error-unmatch", "--", os.path.join(name, "__init__.py")) is None:
    return {"commit": None, "dirty": None}
  commit = _git(root, "rev-parse", "HEAD")
  status = _git(root, "status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def _git(folder: str, *args: str) -> str | None:
  """git's output in folder, or None if git is missing or fails."""
  try:
    result = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True,
                            timeout=GIT_TIMEOUT_S, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip() if result.returncode == 0 else None


def versions() -> dict[str, str | None]:
  """{distribution: installed version or None}, and python's."""
  found = {}
  for package in PACKAGES:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  found["python"] = platform.python_version()
  return found


def devices() -> dict:
  return {"platform": jax.default_backend(), "kind": jax.devices()[0].device_kind,
          "count": jax.device_count(), "process_count": jax.process_count()}


def data_hashes(config, fill, extra: dict[str, str]) -> dict:
  """{config key or flag: hashes of the data it names} (see the module's doc)."""
  data = config.get("data")
  paths = {f"data.{key}": fill(data[key]) for key in DATA_KEYS if data and data.get(key)}
  paths |= {flag: path for flag, path in extra.items() if path}
  hashes = {key: source_hashes(str(path)) for key, path in paths.items()}
  exclude = names(data.get("exclude", ())) if data else []
  if exclude:
    hashes["data.exclude"] = {}
    for path in exclude:
      hashes["data.exclude"] |= source_hashes(fill(path)) or {fill(path): None}
  return hashes


def source_hashes(path: str) -> dict | None:
  """{file: sha256} of a local file or of every file under a folder (in name order),
  {"hub": id} for a hub id, None for neither."""
  if os.path.isfile(path):
    return {path: file_sha256(path)}
  if os.path.isdir(path):
    files = []
    for folder, subfolders, file_names in os.walk(path):
      subfolders.sort()
      files += [os.path.join(folder, name) for name in sorted(file_names)]
    return {file: file_sha256(file) for file in files}
  return {"hub": path} if is_hub_id(path) else None


def file_sha256(path: str) -> str:
  """The sha256 of a file's bytes, read 16 MiB at a time."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      digest.update(block)
  return digest.hexdigest()


def model_fingerprint(path: str) -> dict | None:
  """A model folder's or hub id's hashes (see the module's doc); None for neither."""
  if os.path.isdir(path):
    return checkpoint_hashes(path)
  if not is_hub_id(path):
    return None
  snapshot = _cached_snapshot(path)
  if snapshot is None:
    return {"hub": path, "revision": None}
  return {"hub": path, "revision": os.path.basename(snapshot)} | checkpoint_hashes(snapshot)


def checkpoint_hashes(folder: str) -> dict:
  """{config_sha256, index_sha256, files: {weight file: bytes}} of a checkpoint folder."""
  config_path = os.path.join(folder, hf_io.CONFIG_FILE)
  index_sha256 = None
  for index_name in (weight_files.SAFE_INDEX, weight_files.BIN_INDEX):
    if os.path.isfile(os.path.join(folder, index_name)):
      index_sha256 = file_sha256(os.path.join(folder, index_name))
      break
  else:
    if os.path.isfile(os.path.join(folder, weight_files.SAFE_SINGLE)):
      header = weight_files.read_safetensors_header_bytes(
          os.path.join(folder, weight_files.SAFE_SINGLE))
      index_sha256 = hashlib.sha256(header).hexdigest()
  return {"config_sha256": file_sha256(config_path) if os.path.isfile(config_path) else None,
          "index_sha256": index_sha256,
          "files": {name: os.path.getsize(os.path.join(folder, name))
                    for name in weight_files.weight_file_names(folder)}}


def _cached_snapshot(hub_id: str) -> str | None:
  """The Hugging Face cache's snapshot folder of the hub id's main revision, if it holds
  one (no network), else None."""
  import huggingface_hub
  config_path = huggingface_hub.try_to_load_from_cache(hub_id, hf_io.CONFIG_FILE)
  return os.path.dirname(config_path) if isinstance(config_path, str) else None


def _safely(what: str, compute, *args):
  """compute(*args), or None (and a warning) if it fails."""
  try:
    return compute(*args)
  except Exception as e:  # noqa: BLE001 -- a piece that cannot be determined is null
    log.warning("provenance: could not determine %s (%s: %s); recorded as null", what,
                type(e).__name__, e)
    return None
