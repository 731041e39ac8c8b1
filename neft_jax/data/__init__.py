"""Instruction data: sources, prompt templates, tokenization, batching."""
