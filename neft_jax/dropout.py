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

import json
from typing import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

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
  the lowest score gets max_rate, the highest min_rate; one site gets max_rate.
  The rates come in the scores' (site) order."""
  ranked = sorted(scores, key=scores.__getitem__)  # stable: ties stay in site order
  rank = {site: r for r, site in enumerate(ranked)}
  last = max(len(ranked) - 1, 1)
  # (1 - f) * max + f * min: the formula above, exact at both ends.
  return {site: (1 - rank[site] / last) * max_rate + (rank[site] / last) * min_rate
          for site in scores}


def types_on(sites: str) -> tuple[str, ...]:
  """The site types a `dropout.sites` string turns on, in SITE_TYPES order."""
  names = {name.strip() for name in sites.split(",") if name.strip()}
  return tuple(kind for kind in SITE_TYPES if kind in names)


def site_rates(settings, model_config, scores: Mapping[str, float] | None = None) -> dict[str, float]:
  """The rate of every site (0 where its type is off) for a config's `dropout` section.

  `scores` are the Fisher site scores (mode guided); the guided ranks run over
  the sites whose types are on, so max_rate and min_rate are both used.
  """
  names, on = site_names(model_config.num_layers), types_on(settings.sites)
  rates = dict.fromkeys(names, 0.0)
  if settings.mode == "uniform":
    by_type = dict.fromkeys(on, float(settings.rate))
  elif settings.mode == "hf":
    by_type = {kind: rate for kind, rate in model_config.hf_dropout if kind in on}
  elif settings.mode == "guided":
    by_type = {}
    rates |= guided_rates({site: scores[site] for site in names if site_type(site) in on},
                          settings.max_rate, settings.min_rate)
  else:
    by_type = {}
  for site in names:
    rates[site] = by_type.get(site_type(site), rates[site])
  return rates


def rates_by_type(rates: Mapping[str, float], num_layers: int) -> dict[str, np.ndarray]:
  """Site rates as the train step takes them: "embed" a scalar, each layer type
  [layers]; a type whose rates are all 0 is left out, so it costs nothing."""
  by_type = {"embed": np.float32(rates["embed"])}
  for kind in LAYER_SITE_TYPES:
    by_type[kind] = np.array([rates[f"layers.{i}.{kind}"] for i in range(num_layers)], np.float32)
  return {kind: rate for kind, rate in by_type.items() if np.any(rate > 0)}


def describe(rates: Mapping[str, float], num_layers: int, max_layers: int = 8) -> list[str]:
  """Log lines: one per site type, its rate at every layer (the first `max_layers`)."""
  lines = [f"  {'embed':<17} {rates['embed']:.3f}"]
  for kind in LAYER_SITE_TYPES:
    shown = [rates[f"layers.{i}.{kind}"] for i in range(min(num_layers, max_layers))]
    more = f" ... ({num_layers} layers)" if num_layers > max_layers else ""
    lines.append(f"  {kind:<17} " + " ".join(f"{r:.3f}" for r in shown) + more)
  return lines


def write_rates(path, rates: Mapping[str, float], settings) -> None:
  """dropout_rates.json: the mode, the distribution and every site's rate."""
  payload = {"mode": settings.mode, "distribution": settings.distribution, "rates": dict(rates)}
  with epath.Path(path).open("w") as f:
    json.dump(payload, f, indent=1)


def drop(x: jax.Array, rate: jax.Array, key: jax.Array, distribution: str) -> jax.Array:
  """x with dropout at `rate` (a traced scalar); rate 0 returns x bit for bit."""
  rate = jnp.asarray(rate, jnp.float32)
  if distribution == "bernoulli":
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x * (1.0 / (1.0 - rate)).astype(x.dtype), jnp.zeros((), x.dtype))
  noise = 1.0 + jnp.sqrt(rate / (1.0 - rate)) * jax.random.normal(key, x.shape, jnp.float32)
  return x * noise.astype(x.dtype)


@flax.struct.dataclass
class Dropout:
  """What one forward pass drops: a key and the rates of the site types that are on.

  `rates` maps a site type to its rate: a scalar for `embed` and for one layer's
  view (`layer`), [layers] for the layer types of the whole model. A type that
  is absent is off and costs nothing; which types are present is static (the
  pytree's structure), the rates are data.
  """
  key: jax.Array
  rates: dict
  distribution: str = flax.struct.field(pytree_node=False, default="bernoulli")

  def on(self, kind: str) -> bool:
    return kind in self.rates

  def layer_rates(self) -> dict:
    """The [layers] rates of the layer site types that are on, to scan over."""
    return {kind: rate for kind, rate in self.rates.items() if kind != "embed"}

  def layer(self, index, rates: dict) -> "Dropout":
    """Layer `index`'s view: its own key (position index + 1; embed is 0) and rates."""
    return self.replace(key=jax.random.fold_in(self.key, index + 1), rates=rates)

  def __call__(self, kind: str, x: jax.Array) -> jax.Array:
    """x dropped at this site type's rate, or x itself when the type is off."""
    if kind not in self.rates:
      return x
    key = self.key if kind != "embed" else jax.random.fold_in(self.key, 0)
    return drop(x, self.rates[kind], jax.random.fold_in(key, SITE_TYPES.index(kind)),
                self.distribution)
