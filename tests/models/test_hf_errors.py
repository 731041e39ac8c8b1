"""Bad checkpoints and configs give one clear line, not a traceback from deep inside."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from neft_jax.errors import UserError
from neft_jax.models import load_hf
from tests import tiny_models


@pytest.fixture(scope="module")
def good(tmp_path_factory):
  folder = tmp_path_factory.mktemp("llama")
  tiny_models.build("llama", folder)
  return folder


def copy_of(good, tmp_path):
  folder = tmp_path / "ckpt"
  shutil.copytree(good, folder)
  return folder


def edit_config(folder, **changes):
  config = json.loads((folder / "config.json").read_text())
  config.update(changes)
  (folder / "config.json").write_text(json.dumps(config))


def edit_weights(folder, edit):
  weights = load_file(folder / "model.safetensors")
  edit(weights)
  save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def error_of(path, **kwargs) -> str:
  with pytest.raises(UserError) as info:
    load_hf(str(path), **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_path_missing(tmp_path):
  message = error_of(tmp_path / "nowhere")
  assert "nowhere" in message and "does not exist" in message


def test_hub_id_without_hub_access():
  message = error_of("neft-jax-tests/no-such-model")
  assert "neft-jax-tests/no-such-model" in message and "local checkpoint folder" in message


def test_no_config_json(good, tmp_path):
  folder = copy_of(good, tmp_path)
  (folder / "config.json").unlink()
  assert "has no config.json" in error_of(folder)


def test_unsupported_model_type(good, tmp_path):
  folder = copy_of(good, tmp_path)
  edit_config(folder, model_type="mistral")
  message = error_of(folder)
  assert "'mistral'" in message and "['gpt2', 'llama', 'qwen2']" in message


def test_no_weights(good, tmp_path):
  folder = copy_of(good, tmp_path)
  (folder / "model.safetensors").unlink()
  assert "has no weights" in error_of(folder)


def test_tensor_missing(good, tmp_path):
  folder = copy_of(good, tmp_path)
  edit_weights(folder, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
  message = error_of(folder)
  assert "missing" in message and "model.layers.1.mlp.up_proj.weight" in message


def test_tensor_unexpected(good, tmp_path):
  folder = copy_of(good, tmp_path)
  edit_weights(folder, lambda w: w.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(3)}))
  message = error_of(folder)
  assert "unexpected" in message and "model.layers.2.mlp.up_proj.weight" in message


def test_shape_mismatch_names_tensor_and_both_shapes(good, tmp_path):
  folder = copy_of(good, tmp_path)
  edit_weights(folder, lambda w: w.update(
      {"model.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64)}))
  message = error_of(folder)
  assert "model.layers.0.self_attn.k_proj.weight" in message
  assert "[64, 64]" in message and "[32, 64]" in message


def test_config_disagreeing_with_weights(good, tmp_path):
  folder = copy_of(good, tmp_path)
  edit_config(folder, intermediate_size=96)
  message = error_of(folder)
  assert "mlp" in message and "[96, 64]" in message and "[128, 64]" in message


def test_dtype_that_cannot_be_cast(good, tmp_path):
  folder = copy_of(good, tmp_path)
  edit_weights(folder, lambda w: w.update(
      {"model.norm.weight": torch.ones(64, dtype=torch.int8)}))
  message = error_of(folder)
  assert "model.norm.weight" in message and "int8" in message and "cannot be cast" in message


def test_truncated_weights(good, tmp_path):
  folder = copy_of(good, tmp_path)
  data = (folder / "model.safetensors").read_bytes()
  (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
  assert "truncated" in error_of(folder)


@pytest.mark.parametrize("field, value", [
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    ("hidden_act", "gelu_10"),
])
def test_unsupported_features_name_the_field(good, tmp_path, field, value):
  folder = copy_of(good, tmp_path)
  edit_config(folder, **{field: value})
  message = error_of(folder)
  assert field in message and "not supported" in message


def test_qwen2_sliding_window_in_use(tmp_path):
  tiny_models.build("qwen2_tied", tmp_path)
  edit_config(tmp_path, layer_types=["full_attention", "sliding_attention"])
  assert "layer_types" in error_of(tmp_path)
  edit_config(tmp_path, layer_types=None, use_sliding_window=True, max_window_layers=1)
  assert "use_sliding_window" in error_of(tmp_path)


def test_gpt2_inverse_layer_scaling(tmp_path):
  tiny_models.build("gpt2", tmp_path)
  edit_config(tmp_path, scale_attn_by_inverse_layer_idx=True)
  assert "scale_attn_by_inverse_layer_idx" in error_of(tmp_path)


def test_unknown_model_option(good):
  message = error_of(good, scan=True)
  assert "scan" in message and "scan_layers" in message


def test_bad_option_value(good):
  assert "remat" in error_of(good, remat="sometimes")
