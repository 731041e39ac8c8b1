"""The diagonal Fisher information of the pretraining loss, and guided dropout's site scores.

    fisher_pass(config, out_path, save_diagonal=False) -> fisher.json's content
    fisher_diagonal(graphdef, params, examples, ...)   -> F per parameter (our tree)
    site_scores(diagonal, model_config)                -> site -> score
    save_hf_diagonal(diagonal, model_config, path)     F under the checkpoint's HF names
    read_scores(path, num_layers)                      a fisher.json's scores, checked

Guided dropout (Sharma et al. 2024, arXiv 2406.14005) takes the empirical
diagonal Fisher of the pretraining loss over general text,

    F = (1/N) sum_n (d loss_n / d theta)^2,

where loss_n is the mean next-token cross-entropy over all of example n's real
tokens (no prompt masking, no NEFTune noise, no dropout). The paper's code
runs one example at a time; here `jax.vmap` of a per-example gradient gives a
micro-batch's per-example gradients in one jitted call, the examples split
over the mesh's batch axes and the parameters sharded as in training, and the
squares are summed on the devices in float32. The token embedding and the
output layer are not differentiated densely per example: an example's
embedding gradient is nonzero only on its tokens' rows, and the output
layer's is a product of two small factors (`make_fisher_step`). The
per-example gradients of the other parameters take `fisher.batch_size` times
their memory (divided over the devices), and a micro-batch's logits
[rows, length, vocab] are float32: lower fisher.batch_size for a large model.

A site's score is the mean over the site's tensors of each tensor's mean
Fisher entry (per layer for the stacked layer tensors). For the pre-norm
decoder, a site's tensors are those that feed it:
  * `embed`: the token embedding (with a tied head its Fisher includes the
    head's gradient: one tensor) and GPT-2's position embedding;
  * `layers.{i}.attention_probs`: the attention pre-norm, and q, k, v;
  * `layers.{i}.attention_output`: the output projection;
  * `layers.{i}.mlp_output`: the MLP pre-norm, and gate, up, down.
An untied head and the final norm feed no site, so `fisher_pass` leaves out
the untied head's squares unless the whole diagonal is saved.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx
from tqdm import tqdm

from neft_jax import config_check, dropout, loss, run, sharding
from neft_jax.data import pipeline, sources, text
from neft_jax.data.tokenize import start_token
from neft_jax.errors import UserError
from neft_jax.models import hf_io
from neft_jax.models.config import ModelConfig
from neft_jax.models.transformer import output_logits
from neft_jax.models.weight_files import TensorSpec, write_safetensors

log = logging.getLogger(__name__)

FISHER_FILE = "fisher.json"  # the default name, in a run's workdir
DIAGONAL_FILE = "fisher_diagonal.safetensors"

# Parameter path prefix -> the site type it feeds (None: no site). Every
# parameter must match one, so that a new parameter cannot be left out unseen.
SITE_OF_PARAMETER = (
    ("embed", "embed"),
    ("pos_embed", "embed"),
    ("layers.attn_norm.", "attention_probs"),
    ("layers.attn.query.", "attention_probs"),
    ("layers.attn.key.", "attention_probs"),
    ("layers.attn.value.", "attention_probs"),
    ("layers.attn.out.", "attention_output"),
    ("layers.mlp_norm.", "mlp_output"),
    ("layers.mlp.", "mlp_output"),
    ("lm_head", None),
    ("final_norm.", None),
)


def site_type_of(name: str) -> str | None:
  """The site type that parameter `name` ("layers.attn.query.kernel") feeds, or None."""
  for prefix, kind in SITE_OF_PARAMETER:
    if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
      return kind
  raise AssertionError(f"parameter {name} has no dropout site (add it to SITE_OF_PARAMETER)")


# The per-example loss and the pass --------------------------------------------------

def example_loss(graphdef: nnx.GraphDef, params: nnx.State, input_ids_t: jax.Array,
                 segment_ids_t: jax.Array, loss_chunk_size: int = 0) -> jax.Array:
  """Mean next-token cross-entropy of one example over its real tokens.

  input_ids_t, segment_ids_t: [length]; segment 1 on the example's tokens, 0
  on padding. An empty row's loss is 0 (so its gradient is too).
  """
  model = nnx.merge(graphdef, params)
  input_ids_bt, segment_ids_bt = input_ids_t[None], segment_ids_t[None]  # [1, length]
  hidden_btd = model.hidden_states(input_ids_bt, segment_ids=segment_ids_bt)
  targets_bt = jnp.concatenate([input_ids_bt[:, 1:], input_ids_bt[:, :1]], axis=1)
  mask_bt = jnp.concatenate([segment_ids_bt[:, 1:] != 0, jnp.zeros((1, 1), bool)], axis=1)
  loss_sum = loss.masked_loss_sum(hidden_btd, model.head(), targets_bt, mask_bt, loss_chunk_size)
  return loss_sum / jnp.maximum(mask_bt.sum(), 1).astype(jnp.float32)


# The tables whose per-example gradients the step forms itself, not by autodiff.
TABLES = ("embed", "lm_head")


def _next_token_targets(input_ids_t, segment_ids_t):
  """targets [length] (the next token) and mask [length] (a real next token), as
  `example_loss` computes them."""
  targets_t = jnp.concatenate([input_ids_t[1:], input_ids_t[:1]])
  mask_t = jnp.concatenate([segment_ids_t[1:] != 0, jnp.zeros((1,), bool)])
  return targets_t, mask_t


def _token_sums(ids_t, values_td):
  """[length, d]: at the first position of each distinct token, the sum of
  `values` over the token's positions; 0 at its later positions."""
  same_tt = ids_t[:, None] == ids_t[None, :]  # [length, length]
  sums_td = same_tt.astype(values_td.dtype) @ values_td
  first_t = jnp.argmax(same_tt, axis=1) == jnp.arange(ids_t.shape[0])
  return jnp.where(first_t[:, None], sums_td, 0.0)


def _add_head_squares(sum_vd, logits_grad_ntv, hidden_ntd, groups: int):
  """sum + sum_n (logits_grad_n^T hidden_n)^2: the squared per-example gradients of
  the output layer, one [vocab, length] x [length, embed] matmul per example.

  On the 2-core CPU (8 rows of 64 tokens, vocabulary 32,000, width 256) this loop,
  which adds each square in place, took 0.24 s, a batched matmul [rows, vocab, embed]
  summed over the rows 1.7 s, and an unrolled loop of the rows 0.36 s. With the
  rows split over `groups` devices, each step of the loop takes one row of every
  group, so that a device works on its own rows, and the groups' sums are added
  once at the end.
  """
  rows = logits_grad_ntv.shape[0]
  if groups == 1:
    def add_row(row, sum_vd):
      return sum_vd + jnp.square(logits_grad_ntv[row].T @ hidden_ntd[row])  # [vocab, embed]
    return jax.lax.fori_loop(0, rows, add_row, sum_vd)
  grouped = lambda x: x.reshape(groups, rows // groups, *x.shape[1:])
  logits_grad_gntv, hidden_gntd = grouped(logits_grad_ntv), grouped(hidden_ntd)

  def add_rows(row, sum_gvd):
    grad_gvd = jnp.einsum("gtv,gtd->gvd", logits_grad_gntv[:, row], hidden_gntd[:, row])
    return sum_gvd + jnp.square(grad_gvd)
  sum_gvd = jnp.zeros((groups, *sum_vd.shape), jnp.float32)
  return sum_vd + jax.lax.fori_loop(0, rows // groups, add_rows, sum_gvd).sum(0)


def make_fisher_step(graphdef: nnx.GraphDef, groups: int = 1, head: bool = True):
  """fisher_step(squares_sum, params, batch) -> squares_sum plus the micro-batch's
  per-example squared gradients (float32), batch = input_ids, segment_ids [rows, length]
  (the rows split over `groups` devices). With head=False an untied output
  layer's entry is left as it is: it feeds no dropout site, and its squares are
  one of the step's three vocabulary-wide matmuls.

  The gradients are those of `example_loss`, but the token embedding and the
  output layer, [vocab, embed] each, are left out of the vmapped autodiff, which
  would form each example's dense gradient of both and square it:
    * the embedding: an example's gradient is nonzero only on its tokens' rows;
      autodiff gives the gradient of the looked-up rows [length, embed], the
      positions of equal tokens are summed, and each distinct token's square is
      added at its row;
    * the output layer: an example's gradient is logits_grad^T hidden, from the
      gradient of its loss with respect to its logits [length, vocab] and its
      hidden states [length, embed] (`_add_head_squares`);
    * a tied head is both at once: per example (E + O)^2 = O^2 + E (E + 2 O),
      with E the embedding's part, nonzero on the example's tokens' rows only,
      and O the output layer's, whose entries at those rows are formed for the
      second term.
  """
  def example_gradients(body, tables, input_ids_t, segment_ids_t):
    # body, tables: nested dicts of the parameters, those autodiff sees and the TABLES
    model = nnx.merge(graphdef, nnx.State(body), nnx.State(tables))
    tied, head_vd = model.config.tie_embeddings, model.head()
    rows_td = jnp.take(tables["embed"][...], input_ids_t, axis=0)  # [length, embed]

    def hidden_states(body, rows_td):
      model = nnx.merge(graphdef, nnx.State(body), nnx.State(tables))
      embeddings_btd = rows_td.astype(model.config.compute_jnp_dtype)[None]
      return model.hidden_states(embeddings=embeddings_btd, segment_ids=segment_ids_t[None])

    hidden_btd, hidden_backward = jax.vjp(hidden_states, body, rows_td)
    logits_btv, logits_backward = jax.vjp(lambda h: output_logits(h, head_vd), hidden_btd)
    targets_t, mask_t = _next_token_targets(input_ids_t, segment_ids_t)

    def mean_loss(logits_btv):  # example_loss's, from the logits
      losses_t = optax.softmax_cross_entropy_with_integer_labels(logits_btv[0], targets_t)
      return jnp.sum(jnp.where(mask_t, losses_t, 0.0)) / jnp.maximum(mask_t.sum(), 1)

    logits_grad_btv = jax.grad(mean_loss)(logits_btv)
    body_grads, rows_grad_td = hidden_backward(*logits_backward(logits_grad_btv))
    logits_grad_tv = logits_grad_btv[0].astype(jnp.float32)
    hidden_td = hidden_btd[0].astype(jnp.float32)
    token_grad_td = _token_sums(input_ids_t, rows_grad_td.astype(jnp.float32))
    if tied:  # the output layer's gradient at the example's token rows: [length, embed]
      head_at_tokens_td = jnp.take(logits_grad_tv, input_ids_t, axis=1).T @ hidden_td
      token_squares_td = token_grad_td * (token_grad_td + 2 * head_at_tokens_td)
    else:
      token_squares_td = jnp.square(token_grad_td)
    return body_grads, token_squares_td, logits_grad_tv, hidden_td

  per_example = jax.vmap(example_gradients, in_axes=(None, None, 0, 0))

  def add_squares(sum_, grads_r):
    # Row by row: XLA's CPU backend runs jnp.sum(..., axis=0) over the rows about 3x
    # slower than these adds (a 4-layer GPT-2 of width 128, 8 rows); GPUs fuse either.
    for row in range(grads_r.shape[0]):
      sum_ = sum_ + jnp.square(grads_r[row].astype(jnp.float32))
    return sum_

  def split(state: nnx.State) -> tuple[dict, dict]:
    """(the rest, the tables): the state's top-level entries, as nested dicts."""
    entries = state.raw_mapping
    return ({k: v for k, v in entries.items() if k not in TABLES},
            {k: v for k, v in entries.items() if k in TABLES})

  def fisher_step(squares_sum, params, batch):
    body, tables = split(params)
    body_sum, tables_sum = split(squares_sum)
    input_ids_nt = batch["input_ids"]
    body_grads, token_squares_ntd, logits_grad_ntv, hidden_ntd = per_example(
        body, tables, input_ids_nt, batch["segment_ids"])
    embed_sum = tables_sum["embed"][...].at[input_ids_nt.reshape(-1)].add(
        token_squares_ntd.reshape(-1, token_squares_ntd.shape[-1]))
    if "lm_head" in tables and not head:
      tables_sum = {"lm_head": tables_sum["lm_head"]}
    elif "lm_head" in tables:
      head_sum = _add_head_squares(tables_sum["lm_head"][...], logits_grad_ntv, hidden_ntd, groups)
      tables_sum = {"lm_head": tables_sum["lm_head"].replace(head_sum)}
    else:  # tied: the embedding is the output layer
      embed_sum = _add_head_squares(embed_sum, logits_grad_ntv, hidden_ntd, groups)
      tables_sum = {}
    tables_sum["embed"] = squares_sum["embed"].replace(embed_sum)
    body_sum = jax.tree.map(add_squares, body_sum, body_grads)
    return nnx.State(body_sum | tables_sum)

  return fisher_step


def padded_rows(examples: list[np.ndarray], rows: int, length: int) -> dict[str, np.ndarray]:
  """A micro-batch: input_ids and segment_ids [rows, length], right-padded, empty rows last."""
  input_ids = np.zeros((rows, length), np.int32)
  segment_ids = np.zeros((rows, length), np.int32)
  for row, ids in enumerate(examples):
    input_ids[row, :len(ids)], segment_ids[row, :len(ids)] = ids, 1
  return {"input_ids": input_ids, "segment_ids": segment_ids}


MIN_PADDED_LENGTH = 16


def padded_length(longest_in_batch: int, longest: int) -> int:
  """A micro-batch's padded length: the next power of two (at least
  MIN_PADDED_LENGTH), at most the longest example. So there are few lengths to
  compile for (6 up to 512 tokens), and a row is at most half padding."""
  return min(max(MIN_PADDED_LENGTH, 1 << (longest_in_batch - 1).bit_length()), longest)


def check_batch_size(batch_size: int, mesh, rules) -> None:
  parallel = sharding.data_parallel_size(mesh, rules)
  if batch_size % (parallel * jax.process_count()):
    raise UserError(f"fisher.batch_size={batch_size} does not divide over the {parallel} "
                    f"data-parallel devices of {jax.process_count()} process(es); use a multiple "
                    f"of {parallel * jax.process_count()}")


def fisher_diagonal(graphdef: nnx.GraphDef, params: nnx.State, examples: list[np.ndarray], *,
                    mesh, rules, batch_size: int, progress: bool = False,
                    compiler_options: dict | None = None, head: bool = True
                    ) -> tuple[nnx.State, dict]:
  """(F, timing) over `examples` (int32 token ids, each of >= 2 tokens).

  F is float32, shaped and sharded as `params`; with head=False an untied
  output layer's entry is NaN (not computed: it feeds no dropout site). The examples go longest first
  in micro-batches of `batch_size` rows (the last one filled with empty rows),
  each padded to `padded_length`; the step compiles once per padded length
  (with XLA's `compiler_options`, if given). timing: compile_seconds, seconds
  (the pass without compiling) and examples_per_sec.
  """
  check_batch_size(batch_size, mesh, rules)
  order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))  # stable: same order everywhere
  longest = len(examples[order[0]])
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  zeros = jax.jit(lambda p: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), p),
                  out_shardings=param_shardings)
  batch_sharding = sharding.batch_sharding(mesh, rules, 0)
  step = jax.jit(make_fisher_step(graphdef, sharding.data_parallel_size(mesh, rules), head),
                 donate_argnums=0,
                 out_shardings=param_shardings)
  local_rows = batch_size // jax.process_count()
  first_row = jax.process_index() * local_rows

  def global_batch(chosen: list[np.ndarray], length: int):
    rows = padded_rows(chosen, batch_size, length)
    return sharding.global_batch({k: v[first_row:first_row + local_rows] for k, v in rows.items()},
                                 batch_sharding)

  started = time.perf_counter()
  compile_seconds = 0.0
  compiled = {}  # padded length -> the compiled step
  squares_sum = zeros(params)
  bar = tqdm(total=len(examples), unit="example", dynamic_ncols=True,
             disable=not progress or jax.process_index() != 0)
  for start in range(0, len(examples), batch_size):
    chosen = [examples[i] for i in order[start:start + batch_size]]
    length = padded_length(len(chosen[0]), longest)
    batch = global_batch(chosen, length)
    if length not in compiled:
      compile_started = time.perf_counter()
      compiled[length] = step.lower(squares_sum, params, batch).compile(compiler_options)
      compile_seconds += time.perf_counter() - compile_started
    squares_sum = compiled[length](squares_sum, params, batch)
    jax.block_until_ready(squares_sum)
    bar.update(len(chosen))
  bar.close()
  def mean(squares_sum: nnx.State) -> nnx.State:
    diagonal = jax.tree.map(lambda x: x / len(examples), squares_sum)
    if not head and "lm_head" in diagonal:
      diagonal["lm_head"] = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), diagonal["lm_head"])
    return diagonal

  diagonal = jax.jit(mean, donate_argnums=0, out_shardings=param_shardings)(squares_sum)
  jax.block_until_ready(diagonal)
  seconds = time.perf_counter() - started - compile_seconds
  log.info("fisher: micro-batches padded to %s tokens", sorted(compiled))
  return diagonal, {"compile_seconds": round(compile_seconds, 3), "seconds": round(seconds, 3),
                    "examples_per_sec": round(len(examples) / seconds, 3)}


# Site scores and rates ---------------------------------------------------------------

def _flat(state: nnx.State) -> dict[str, jax.Array]:
  return {".".join(str(p) for p in path): v.get_value() if isinstance(v, nnx.Variable) else v
          for path, v in nnx.to_flat_state(state)}


def tensor_means(diagonal: nnx.State, num_layers: int) -> dict[str, np.ndarray]:
  """Each parameter's mean Fisher entry: a scalar, or [layers] for stacked ones
  (computed on the devices; only the means come to the host)."""
  flat = _flat(diagonal)

  def mean(name, x):
    x = x.astype(jnp.float32)
    return x.reshape(num_layers, -1).mean(axis=1) if name.startswith("layers.") else x.mean()

  means = jax.jit(lambda f: {name: mean(name, x) for name, x in f.items()})(flat)
  return {name: np.asarray(jax.device_get(m), np.float64) for name, m in means.items()}


def site_scores_from_means(means: dict[str, np.ndarray], num_layers: int) -> dict[str, float]:
  """site -> the unweighted mean over the site's tensors of their mean Fisher, in site order."""
  per_site: dict[str, list[float]] = {site: [] for site in dropout.site_names(num_layers)}
  for name, value in means.items():
    kind = site_type_of(name)
    if kind is None:
      continue
    if kind == "embed":
      per_site["embed"].append(float(value))
    else:
      for layer in range(num_layers):
        per_site[f"layers.{layer}.{kind}"].append(float(value[layer]))
  return {site: float(np.mean(values)) for site, values in per_site.items()}


def site_scores(diagonal: nnx.State, model_config: ModelConfig) -> dict[str, float]:
  """The score of every dropout site (see the module's doc)."""
  return site_scores_from_means(tensor_means(diagonal, model_config.num_layers),
                                model_config.num_layers)


def read_scores(path: str, num_layers: int) -> dict[str, float]:
  """site -> score of a fisher.json, in site order, checked against a model of
  `num_layers` layers: a file made for another model is a UserError that says
  what it has, what the model needs and what to do."""
  fix = "run python -m neft_jax.fisher for this model, or point dropout.fisher at its fisher.json"
  try:
    with open(path) as f:
      content = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} does not exist; {fix}") from None
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path} could not be read as a fisher.json ({e}); {fix}") from None
  scores = content.get("sites") if isinstance(content, dict) else None
  if not isinstance(scores, dict) or not all(
      isinstance(v, (int, float)) and math.isfinite(v) for v in scores.values()):
    raise UserError(f"{path} has no 'sites' object of finite scores; {fix}")
  needed = dropout.site_names(num_layers)
  if set(scores) != set(needed):
    have_layers = len({s.split(".")[1] for s in scores if s.startswith("layers.")})
    if set(scores) == set(dropout.site_names(have_layers)):
      raise UserError(f"{path} scores the {len(scores)} dropout sites of a {have_layers}-layer "
                      f"model, but this model has {num_layers} layers ({len(needed)} sites); {fix}")
    odd = sorted(set(scores) ^ set(needed))
    raise UserError(f"{path}: its sites do not match this {num_layers}-layer model's {len(needed)} "
                    f"(differing: {odd[:4]}{' ...' if len(odd) > 4 else ''}); {fix}")
  return {site: float(scores[site]) for site in needed}


# The diagonal under Hugging Face names -----------------------------------------------

def save_hf_diagonal(diagonal: nnx.State, model_config: ModelConfig, path: str) -> None:
  """Writes F as float32 safetensors under the checkpoint's own tensor names and
  shapes, through the family's mapping (the transforms export uses: GPT-2's
  fused c_attn is q, k and v side by side, transposed). Every process calls it."""
  flat = _flat(diagonal)
  tensors = hf_io.FAMILIES[model_config.family].tensors(model_config)
  jobs, specs = {}, []
  for tensor in tensors:
    per_layer = [flat[p].shape[1:] if tensor.per_layer else flat[p].shape for p in tensor.params]
    for layer in range(model_config.num_layers) if tensor.per_layer else [None]:
      jobs[tensor.hf_name(layer)] = (tensor, layer)
      specs.append(TensorSpec(tensor.hf_name(layer), np.dtype(np.float32), tensor.hf_shape(per_layer)))

  on_host: dict[str, np.ndarray] = {}  # the parameters of the tensor being written

  def produce(name: str) -> np.ndarray:
    tensor, layer = jobs[name]
    if set(on_host) != set(tensor.params):  # the specs come tensor by tensor, layer by layer
      on_host.clear()
      on_host.update({p: hf_io._to_host(flat[p]) for p in tensor.params})  # noqa: SLF001
    arrays = [on_host[p] if layer is None else on_host[p][layer] for p in tensor.params]
    return tensor.from_params(arrays).astype(np.float32)

  if jax.process_index() == 0:
    write_safetensors(path, specs, produce, metadata={"format": "pt", "content": "diagonal Fisher"})
  else:
    for spec in specs:  # take part in the same gathers as process 0
      produce(spec.name)


# The whole pass from a config ---------------------------------------------------------

def fisher_documents(config: ml_collections.ConfigDict, tokenizer) -> list[str]:
  """The config's Fisher text (`neft_jax.data.text`), before the model is read."""
  section, fields = config.fisher, config.data.fields
  return text.load_documents(section.data_path, split=section.split, text_field=section.text_field,
                             fields=sources.Fields(instruction=fields.instruction,
                                                   input=fields.input, output=fields.output),
                             template=config.data.template, tokenizer=tokenizer)


def fisher_examples(config: ml_collections.ConfigDict, documents: list[str], tokenizer,
                    model_config: ModelConfig) -> text.TokenizedText:
  """The pass's token ids, from the config's fisher section."""
  section = config.fisher
  if model_config.positions == "learned" and section.max_length > model_config.max_positions:
    raise UserError(f"fisher.max_length={section.max_length} is more than the model's "
                    f"{model_config.max_positions} positions, which are learned; set "
                    f"fisher.max_length to at most {model_config.max_positions}")
  tokenized = text.tokenize_documents(documents, tokenizer, max_length=section.max_length,
                                      num_examples=section.num_examples,
                                      bos=start_token(model_config, tokenizer), seed=config.seed)
  if not tokenized.input_ids:
    raise UserError(f"fisher.data_path={section.data_path!r}: Fisher data with no text of 2 or "
                    "more tokens; give documents the model can predict a token of")
  return tokenized


def fisher_pass(config: ml_collections.ConfigDict, out_path: str, save_diagonal: bool = False,
                *, workdir=None, mesh=None, rules=None, progress: bool = True,
                compiler_options: dict | None = None) -> dict:
  """Runs the Fisher pass of `config` (model.path, the fisher section) and writes
  fisher.json to `out_path` (and, with save_diagonal, fisher_diagonal.safetensors
  beside it). Returns fisher.json's content.

  `workdir` (a training run's) fills `{workdir}` in model.path, model.tokenizer
  and fisher.data_path; `mesh` (and `rules`, default the config's) is the
  caller's mesh, else one is made from the config; `compiler_options` go to
  XLA for the pass's step.
  """
  config_check.validate(config)
  if not out_path:
    raise UserError("--out is required: the fisher.json to write")
  if os.path.isdir(out_path):
    raise UserError(f"--out={out_path} is a folder; give the path of the fisher.json to write")
  if workdir is not None:
    config = config.copy_and_resolve_references()
    config.model.path = run.resolve(config.model.path, workdir)
    config.model.tokenizer = run.resolve(config.model.tokenizer, workdir)
    config.fisher.data_path = run.resolve(config.fisher.data_path, workdir)
  model_path = config.model.path
  tokenizer = pipeline.load_tokenizer(*(
      (config.model.tokenizer, "model.tokenizer") if config.model.tokenizer
      else (model_path, "model.path")))
  documents = fisher_documents(config, tokenizer)
  model_config = hf_io.model_config(model_path, config.model)
  tokenized = fisher_examples(config, documents, tokenizer, model_config)
  log.info("fisher: %d of %d documents (%s, seed %d), %d tokens, %d cut at fisher.max_length=%d, "
           "%d too short", len(tokenized.input_ids), tokenized.num_documents, tokenized.selection,
           config.seed, tokenized.num_tokens, tokenized.num_truncated, config.fisher.max_length,
           tokenized.num_too_short)
  if mesh is None:
    mesh, rules = sharding.mesh_from_config(config)
  elif rules is None:
    rules = tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                  for name, axes in config.sharding.rules)
  check_batch_size(config.fisher.batch_size, mesh, rules)
  model = hf_io.load_hf(model_path, mesh=mesh, rules=rules, param_dtype=model_config.param_dtype,
                        dtype=model_config.dtype, scan_layers=model_config.scan_layers,
                        remat=model_config.remat, attention=model_config.attention)
  graphdef, params = nnx.split(model, nnx.Param)
  del model
  # Only a saved diagonal needs an untied output layer's entry: it feeds no site.
  diagonal, timing = fisher_diagonal(graphdef, params, tokenized.input_ids, mesh=mesh, rules=rules,
                                     batch_size=config.fisher.batch_size, progress=progress,
                                     compiler_options=compiler_options, head=save_diagonal)
  scores = site_scores(diagonal, model_config)
  content = {
      "model": model_path,
      "data_path": config.fisher.data_path,
      "num_examples": len(tokenized.input_ids),
      "tokens": tokenized.num_tokens,
      "selection": tokenized.selection,
      "seed": config.seed,
      "max_length": config.fisher.max_length,
      "sites": scores,
      "rates": dropout.guided_rates(scores, config.dropout.max_rate, config.dropout.min_rate),
      "max_rate": config.dropout.max_rate,
      "min_rate": config.dropout.min_rate,
      **timing,
  }
  out = epath.Path(out_path)  # a local path, or a bucket's (a training run's workdir)
  if jax.process_index() == 0:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(content, indent=2))
  if save_diagonal:
    save_hf_diagonal(diagonal, model_config, os.path.join(os.path.dirname(os.path.abspath(out_path)),
                                                          DIAGONAL_FILE))
  log.info("fisher: %d examples in %.1f s (%.2f examples/s, %.1f s to compile); wrote %s",
           content["num_examples"], timing["seconds"], timing["examples_per_sec"],
           timing["compile_seconds"], out_path)
  return content


def format_sites(content: dict, limit: int = 25) -> str:
  """A short table of fisher.json's sites: site, score, rate (beyond `limit` sites,
  the first and last 6; fisher.json has them all)."""
  sites = list(content["sites"])
  shown = sites if len(sites) <= limit else sites[:6] + [None] + sites[-6:]
  width = max(len("site"), *(len(s) for s in sites))
  lines = [f"{'site':<{width}}  {'score':>10}  {'rate':>6}"]
  for site in shown:
    if site is None:
      lines.append(f"{'...':<{width}}  ({len(sites) - 12} more in fisher.json)")
      continue
    lines.append(f"{site:<{width}}  {content['sites'][site]:>10.3e}  {content['rates'][site]:>6.4f}")
  return "\n".join(lines)
