"""Prompt formats: the Alpaca templates, or the tokenizer's own chat template.

A template turns a record into (prompt, response) text. The loss is computed
on the response only; the tokenizer's EOS is appended after it.
"""

from __future__ import annotations

from neft_jax.data.sources import Record
from neft_jax.errors import UserError

# Stanford Alpaca's templates, as the NEFTune paper fine-tuned with them.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n")

TEMPLATES = ("alpaca", "chat")


def check_template(name: str, tokenizer) -> None:
  if name not in TEMPLATES:
    raise UserError(f"data.template={name!r} is not one of {list(TEMPLATES)}")
  if name == "chat" and not getattr(tokenizer, "chat_template", None):
    raise UserError("data.template='chat' but the tokenizer has no chat_template; "
                    "use data.template='alpaca' or a tokenizer that ships one")


def prompt(record: Record, template: str, tokenizer=None) -> str:
  """The text the model is conditioned on (no loss on it)."""
  if template == "alpaca":
    if record.input:
      return ALPACA_WITH_INPUT.format(instruction=record.instruction, input=record.input)
    return ALPACA_NO_INPUT.format(instruction=record.instruction)
  content = record.instruction + (f"\n\n{record.input}" if record.input else "")
  return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                       tokenize=False, add_generation_prompt=True)


def shortest_prompt(template: str, tokenizer=None) -> str:
  """The template with empty fields: the least a prompt can take."""
  return prompt(Record(instruction="", input="", output=""), template, tokenizer)
