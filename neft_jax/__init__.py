"""neft_jax: fine-tuning language models in JAX/Flax NNX with noisy embeddings (NEFTune)."""
