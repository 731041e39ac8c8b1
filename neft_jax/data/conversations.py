"""Multi-turn conversations: read ShareGPT and messages data, render, mask every assistant turn.

    load_conversations(path, split, field)   Conversations from json / jsonl / parquet / the hub
    tokenize_conversations(conversations, tokenizer, ...)   ids and loss masks (a TokenizedSet)
    reply_prompt(conversation, tokenizer, template)   the prompt and reference of its last reply

**Formats.** A row holds its turns in `conversations` (ShareGPT: `{"from":
"human" | "gpt" | "system", "value": ...}`) or in `messages` (OpenAI's, which
TRL, axolotl and LLaMA-Factory read: `{"role": "user" | "assistant" |
"system", "content": ...}`); data.fields.messages names another column. Roles
map to system, user and assistant; any other role is an error.

**Rendering.** `data.template="chat"` renders with the tokenizer's own chat
template; `"plain_chat"` with `templates.PLAIN_CHAT`, for base models that have none:

    {system}\\n\\n### User:\\n{user}\\n\\n### Assistant:\\n{assistant}{eos}\\n\\n ...

Its end of turn is the tokenizer's EOS, which generation stops at.

**The loss mask.** The whole conversation is rendered once and tokenized once
(as `apply_chat_template(..., tokenize=True)` feeds a model at inference). An
assistant turn's text is found by rendering turn by turn: it begins where the
conversation up to it, rendered with the generation prompt, ends, and it ends
where the conversation through it ends. The loss covers that text up to and
including the template's end-of-turn token (its first special token, such as
`<|im_end|>`, `<|eot_id|>` or `</s>`); what follows (a line break) is
scaffolding, as are the system and user turns. A token is trained on when any
character of it lies in those spans, as transformers'
`return_assistant_tokens_mask` counts them. `data.train_on="last_assistant"`
keeps the loss on the last assistant turn alone.

**Truncation.** A conversation longer than data.max_length is cut after the
last assistant turn that still fits (the kept turns are a conversation of
their own, so `last_assistant` then trains on the last kept turn). Where not
even the first assistant turn ends in time, it is cut at max_length inside
that turn, and dropped when no assistant token is left. Both are counted.
BOS is added as for instruction records (`neft_jax.data.tokenize`), unless the
template renders it.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from tqdm import tqdm

from neft_jax.data import sources, templates
from neft_jax.data.tokenize import TokenizedSet
from neft_jax.errors import UserError

TRAIN_ON = ("all_assistant", "last_assistant")
# Both formats' role names, as the three roles a chat template knows.
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
         "assistant": "assistant"}
# (turn list column, role key, text key) of each format, tried in this order.
LAYOUTS = (("conversations", "from", "value"), ("messages", "role", "content"))
PROGRESS_FROM = 5000  # conversations: a progress bar while so many are rendered and tokenized


@dataclasses.dataclass(frozen=True)
class Conversation:
  """Turns as (role, text) pairs, role one of system, user, assistant."""
  turns: tuple[tuple[str, str], ...]

  def messages(self) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in self.turns]


def _conversation(row, where: str, number: int, field: str) -> Conversation:
  at = f"{where}: record {number} (counting from 0)"
  if field:
    layouts = [(field, role, text) for _, role, text in LAYOUTS]
  else:
    layouts = [layout for layout in LAYOUTS if layout[0] in row]
  if not layouts or all(row.get(layout[0]) is None for layout in layouts):
    names = f"{field!r}" if field else "'conversations' (ShareGPT) or 'messages'"
    raise UserError(f"{at} has no {names} field; a conversation record holds its turns there "
                    "(data.fields.messages names another column)")
  column = layouts[0][0]
  turns = row[column]
  if not isinstance(turns, (list, tuple)) or not len(turns):
    what = "an empty" if isinstance(turns, (list, tuple)) else f"a {type(turns).__name__}"
    raise UserError(f"{at} has {what} {column!r} field; a conversation is a list of turns, at "
                    "least one of them the assistant's")
  out = []
  for index, turn in enumerate(turns):
    if not isinstance(turn, dict):
      raise UserError(f"{at}: turn {index} is a {type(turn).__name__}, not an object with a role "
                      "and a text")
    layout = next((l for l in layouts if l[1] in turn), layouts[0])
    role_key, text_key = layout[1], layout[2]
    role, text = turn.get(role_key), turn.get(text_key)
    if role not in ROLES:
      raise UserError(f"{at}: turn {index} has role {role!r}, which is not one of "
                      f"{sorted(ROLES)}; fix the record or drop it")
    if not isinstance(text, str):
      what = "no" if text is None else f"a non-string ({type(text).__name__})"
      raise UserError(f"{at}: turn {index} has {what} {text_key!r} field")
    out.append((ROLES[role], text))
  if not any(role == "assistant" for role, _ in out):
    raise UserError(f"{at} has no assistant turn, so nothing to train on; drop it or add the "
                    "assistant's reply")
  return Conversation(tuple(out))


def load_conversations(path: str, *, split: str = "train", field: str = "",
                       config_key: str = "data.path") -> list[Conversation]:
  """The conversations of a local .json / .jsonl / .parquet file or folder, or a hub split;
  `field` the turn list's column ("" : `conversations` or `messages`, whichever a row has)."""
  out = []
  for rows, where in sources.rows_of(path, split, config_key):
    for number, row in enumerate(rows):
      if not isinstance(row, dict):
        raise UserError(f"{where}: record {number} (counting from 0) is a {type(row).__name__}, "
                        "not an object holding a conversation")
      out.append(_conversation(row, where, number, field))
  if not out:
    raise UserError(f"{config_key}={path!r} holds no conversations; the dataset is empty")
  return out


def render(tokenizer, template: str, messages: list[dict], generation_prompt: bool = False) -> str:
  """The text of `messages` under Jinja `template`."""
  return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                       add_generation_prompt=generation_prompt)


def reply_prompt(conversation: Conversation, tokenizer, template: str) -> dict[str, str]:
  """What generation answers for a held-out conversation: its last reply, after the turns
  before it (`prompt`, rendered with the generation prompt), with the last user turn as
  the `instruction` and the reply as the reference `output`."""
  messages = conversation.messages()
  last = max(i for i, (role, _) in enumerate(conversation.turns) if role == "assistant")
  users = [text for role, text in conversation.turns[:last] if role == "user"]
  return {"instruction": users[-1] if users else "", "output": conversation.turns[last][1],
          "prompt": render(tokenizer, templates.chat_template(template, tokenizer),
                           messages[:last], generation_prompt=True)}


def _special_tokens(tokenizer) -> list[str]:
  added = [token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values()
           if token.special]
  return sorted(set(added) | set(tokenizer.all_special_tokens), key=len, reverse=True)


def assistant_spans(conversation: Conversation, tokenizer, template: str,
                    specials: list[str]) -> tuple[str, list[tuple[int, int]]]:
  """The rendered text and, per assistant turn, the [start, end) characters its loss covers:
  through the first of `specials` (the tokenizer's special tokens) after the turn begins."""
  messages = conversation.messages()
  text = render(tokenizer, template, messages)
  spans = []
  for index, (role, _) in enumerate(conversation.turns):
    if role != "assistant":
      continue
    start = len(render(tokenizer, template, messages[:index], generation_prompt=True))
    through = render(tokenizer, template, messages[:index + 1])
    if not (text.startswith(through) and through.startswith(text[:start]) and start <= len(through)):
      raise UserError("the tokenizer's chat template does not render a conversation turn by turn "
                      "(what it renders for the first turns is not where the whole conversation "
                      "begins), so its assistant turns cannot be found; use "
                      "data.template='plain_chat'")
    turn = text[start:len(through)]
    ends = [turn.find(token) + len(token) for token in specials if token in turn]
    spans.append((start, start + (min(ends) if ends else len(turn))))
  return text, spans


def _token_spans(offsets: np.ndarray, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
  """[first, last + 1) token of each character span: the tokens any of its characters fall in."""
  out = []
  for start, end in spans:
    inside = np.flatnonzero((offsets[:, 1] > start) & (offsets[:, 0] < end)
                            & (offsets[:, 1] > offsets[:, 0]))
    if inside.size:
      out.append((int(inside[0]), int(inside[-1]) + 1))
  return out


@dataclasses.dataclass
class ConversationSet(TokenizedSet):
  num_cut_at_turn: int = 0  # conversations cut after their last assistant turn that fits


def tokenize_conversations(conversations: list[Conversation], tokenizer, *, max_length: int,
                           template: str, bos: int | None,
                           train_on: str = "all_assistant") -> ConversationSet:
  """Token ids and assistant-turn loss masks of `conversations`, in order."""
  if train_on not in TRAIN_ON:
    raise UserError(f"data.train_on={train_on!r} is not one of {list(TRAIN_ON)}")
  source = templates.chat_template(template, tokenizer)
  specials = _special_tokens(tokenizer)
  out = ConversationSet([], [], [])
  # About 2 ms a conversation of 4 rounds on one core: ShareGPT's 90k take minutes.
  bar = tqdm(conversations, desc="conversations", unit="conversation", dynamic_ncols=True,
             leave=False, disable=len(conversations) < PROGRESS_FROM or jax.process_index() != 0)
  for number, conversation in enumerate(bar):
    try:
      text, char_spans = assistant_spans(conversation, tokenizer, source, specials)
    except UserError:
      raise
    except Exception as e:  # a template's raise_exception, say on turns out of order
      remedy = ("fix the record or use data.template='plain_chat'" if template == "chat"
                else "fix the record")
      raise UserError(f"conversation {number} (counting from 0) cannot be rendered by the "
                      f"{'tokenizer' if template == 'chat' else 'plain_chat'} template "
                      f"({type(e).__name__}: {e}); {remedy}") from None
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                        verbose=False)
    ids, offsets = list(encoded["input_ids"]), np.asarray(encoded["offset_mapping"], np.int64)
    offsets = offsets.reshape(-1, 2)
    if bos is not None and ids[:1] != [bos]:
      ids, offsets = [bos, *ids], np.concatenate([[[0, 0]], offsets])
    spans = _token_spans(offsets, char_spans)
    cut = len(ids)
    if cut > max_length:
      ends = [end for _, end in spans if end <= max_length]
      cut = ends[-1] if ends else max_length
    kept = [(start, min(end, cut)) for start, end in spans if start < cut]
    if train_on == "last_assistant":
      kept = kept[-1:]
    if not kept:
      out.num_dropped += 1
      continue
    if cut < len(ids):  # at a turn boundary, or inside the first assistant turn
      if any(end == cut for _, end in spans):
        out.num_cut_at_turn += 1
      else:
        out.num_truncated += 1
    mask = np.zeros(cut, bool)
    for start, end in kept:
      mask[start:end] = True
    out.input_ids.append(np.asarray(ids[:cut], np.int32))
    out.loss_masks.append(mask)
    out.records.append(conversation)
  return out
