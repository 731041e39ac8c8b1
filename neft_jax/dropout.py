"""Dropout sites in the decoder and their rates (none, uniform, hf, guided).

The sites are `embed` (the input embeddings, after GPT-2's positions are added)
and, for every layer i, `layers.{i}.attention_probs` (the attention
probabilities), `layers.{i}.attention_output` and `layers.{i}.mlp_output` (the
outputs of attention and of the MLP, before the residual adds): 1 + 3 * layers
sites.

Guided dropout (Sharma et al. 2024, "Information Guided Regularization for
Fine-tuning Language Models", arXiv 2406.14005) ranks the sites by their score,
the mean diagonal Fisher information of the pretraining loss over the site's
tensors (`neft_jax.information`), and gives rank r of S sites the rate

    max_rate - (max_rate - min_rate) * r / (S - 1)

so the least informative site drops the most.

`distribution` "bernoulli" is inverted dropout (keep with probability 1 - p,
scale by 1 / (1 - p)); "gaussian" multiplies by noise from N(1, p / (1 - p))
(Srivastava et al. 2014), the same variance. Dropout happens only in the train
step, from keys folded like the NEFTune noise: the dropout purpose key of the
root key, then the step, the micro-batch, the layer and the site type.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from neft_jax.errors import UserError

log = logging.getLogger(__name__)

SITE_TYPES = ("embed", "attention_probs", "attention_output", "mlp_output")
LAYER_SITE_TYPES = SITE_TYPES[1:]
MODES = ("none", "uniform", "hf", "guided")
DISTRIBUTIONS = ("bernoulli", "gaussian")


def site_names(num_layers: int) -> list[str]:
  """Every site in order: embed, then each layer's three."""
  return ["embed"] + [f"layers.{i}.{kind}" for i in range(num_layers) for kind in LAYER_SITE_TYPES]


def site_type(site: str) -> str:
  return site.rsplit(".", 1)[-1]


def guided_rates(scores: Mapping[str, float], max_rate: float, min_rate: float) -> dict[str, float]:
  """Rates linear in the rank of ascending scores (ties keep the sites' order):
  the lowest score gets max_rate, the highest min_rate; one site gets max_rate."""
  ranked = sorted(scores, key=scores.__getitem__)  # stable: ties stay in site order
  last = max(len(ranked) - 1, 1)
  return {site: max_rate - (max_rate - min_rate) * (rank / last) for rank, site in enumerate(ranked)}


def hf_rates(hf_config: Mapping, family: str) -> dict[str, float]:
  """Rates per site type from a checkpoint's config.json, as transformers applies
  them in training: GPT-2's embd_pdrop, attn_pdrop and resid_pdrop (both
  residual branches); Llama's and Qwen2's attention_dropout."""
  if family == "gpt2":
    return {"embed": float(hf_config.get("embd_pdrop", 0.1)),
            "attention_probs": float(hf_config.get("attn_pdrop", 0.1)),
            "attention_output": float(hf_config.get("resid_pdrop", 0.1)),
            "mlp_output": float(hf_config.get("resid_pdrop", 0.1))}
  return {"embed": 0.0, "attention_probs": float(hf_config.get("attention_dropout", 0.0)),
          "attention_output": 0.0, "mlp_output": 0.0}
