"""Prompt formats: the Alpaca templates, a chat template, or plain text.

A template turns a record into (prompt, response) text. The loss is computed
on the response only; the tokenizer's EOS is appended after it. `chat` renders
with the tokenizer's own chat template, `plain_chat` with PLAIN_CHAT, the
fallback for base models that ship none; both render conversations too
(`neft_jax.data.conversations`).

`text` (plain-text training, `neft_jax.data.text`) has no prompt to mask: a
document is trained on whole. An instruction record becomes the plain text
`flatten(record)`: its instruction, input (if any) and output joined by a
blank line ("\n\n"), with no template words around them.
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

TEMPLATES = ("alpaca", "chat", "plain_chat", "text")
CHAT_TEMPLATES = ("chat", "plain_chat")  # rendered by a Jinja chat template
TEXT_SEPARATOR = "\n\n"  # between the parts of a flattened instruction record

# The fallback template: Alpaca's "### " headers, one blank line between turns, EOS
# ending each assistant turn; {% generation %} marks what carries loss, so
# transformers' return_assistant_tokens_mask can check the mask.
PLAIN_CHAT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Assistant:\n' }}{% generation %}{{ message['content'] + eos_token }}"
    "{% endgeneration %}{{ '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}")


def check_template(name: str, tokenizer) -> None:
  if name not in TEMPLATES:
    raise UserError(f"data.template={name!r} is not one of {list(TEMPLATES)}; use alpaca, chat or "
                    "plain_chat for instruction tuning, text for plain-text training")
  if name == "chat":
    chat_template(name, tokenizer)


def chat_template(template: str, tokenizer) -> str:
  """The Jinja source `template` ("chat" or "plain_chat") renders with."""
  if template == "plain_chat":
    return PLAIN_CHAT
  if not getattr(tokenizer, "chat_template", None):
    raise UserError("data.template='chat' but the tokenizer has no chat_template; use "
                    "data.template='plain_chat' (neft_jax's plain template) or a tokenizer that "
                    "ships one")
  return tokenizer.chat_template


def prompt(record: Record, template: str, tokenizer=None) -> str:
  """The text the model is conditioned on (no loss on it).

  For `text`: a plain-text record (the document in `input`, no instruction)
  is its document; an instruction record is its instruction and input, each
  followed by the blank line before what comes next, so that prompt + output
  is `flatten(record)`.
  """
  if template == "text":
    parts = [part for part in (record.instruction, record.input) if part]
    head = TEXT_SEPARATOR.join(parts)
    return head + TEXT_SEPARATOR if parts and (record.instruction or record.output) else head
  if template == "alpaca":
    if record.input:
      return ALPACA_WITH_INPUT.format(instruction=record.instruction, input=record.input)
    return ALPACA_NO_INPUT.format(instruction=record.instruction)
  content = record.instruction + (f"\n\n{record.input}" if record.input else "")
  return tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                       chat_template=chat_template(template, tokenizer),
                                       tokenize=False, add_generation_prompt=True)


def shortest_prompt(template: str, tokenizer=None) -> str:
  """The template with empty fields: the least a prompt can take."""
  return prompt(Record(instruction="", input="", output=""), template, tokenizer)


def flatten(record: Record) -> str:
  """An instruction record as plain text: instruction, input and output, joined by a blank line."""
  return prompt(record, "text") + record.output
