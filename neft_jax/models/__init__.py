"""GPT-2, Llama-2 and Qwen2 as one Flax NNX decoder, with Hugging Face checkpoint I/O."""

from neft_jax.models.config import ModelConfig
from neft_jax.models.hf_io import FAMILIES, load_hf, read_config, save_hf
from neft_jax.models.transformer import Transformer

__all__ = ["FAMILIES", "ModelConfig", "Transformer", "load_hf", "read_config", "save_hf"]
