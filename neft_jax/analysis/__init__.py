"""What fine-tuning changed: small functions comparing a base model with a tuned one.

  linear_cka(x, y, debiased=False), CKATable, CKAAccumulator   representations (cka.py)
  weight_change(base_params, tuned_params)                      weights (weights.py)
  attention_divergence(p, q, mask)                              attention (attention.py)

They take arrays, not models, and reduce batch by batch where the inputs are
large (token features, attention probabilities): whoever runs the models feeds
them one batch at a time and keeps only the sums.
"""

from neft_jax.analysis.attention import AttentionStats, attention_divergence
from neft_jax.analysis.cka import CKAAccumulator, CKATable, linear_cka
from neft_jax.analysis.weights import Change, WeightChange, weight_change

__all__ = ["AttentionStats", "attention_divergence", "CKAAccumulator", "CKATable", "linear_cka",
           "Change", "WeightChange", "weight_change"]
