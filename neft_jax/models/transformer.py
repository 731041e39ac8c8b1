"""One decoder-only transformer for GPT-2, Llama-2 and Qwen2, in Flax NNX.

The families differ only in the switches of `ModelConfig`: the norm (LayerNorm
or RMSNorm), the positions (learned or rotary), the MLP (plain or gated), the
biases, the head tying and grouped-query attention.

Conventions:
  * Tensor names carry their einsum letters: b batch, t query length, s key
    length, d embed, n heads, k kv heads, h head_dim, m mlp, v vocab.
  * Kernels are stored in Hugging Face's [out, in] order (reshaped into heads),
    so loading a checkpoint is a reshape, not a transpose.
  * Every parameter carries `logical_axes` metadata naming its dimensions;
    `neft_jax.sharding` maps those names to mesh axes. No mesh axis appears here.
  * The layers are always stored stacked ([layers, ...] on every block
    parameter) and run either with `jax.lax.scan` (one compiled body) or as an
    unrolled Python loop, so both read and write the same weights.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from neft_jax.models import lora
from neft_jax.models.config import ACTIVATIONS, REMAT_POLICIES, ModelConfig
from neft_jax import sharding


def _param(rngs: nnx.Rngs, init, shape, axes, dtype) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


class Norm(nnx.Module):
  """LayerNorm (GPT-2) or RMSNorm (Llama, Qwen2), computed in float32."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.kind, self.eps = cfg.norm, cfg.norm_eps
    d, dtype = cfg.embed_dim, cfg.param_jnp_dtype
    self.scale = _param(rngs, jax.nn.initializers.ones, (d,), ("norm",), dtype)
    if cfg.norm == "layernorm":
      self.bias = _param(rngs, jax.nn.initializers.zeros, (d,), ("norm",), dtype)

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    x = x_btd.astype(jnp.float32)
    if self.kind == "layernorm":
      x = x - x.mean(axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    y = x.astype(x_btd.dtype) * self.scale[...].astype(x_btd.dtype)
    if self.kind == "layernorm":
      y = y + self.bias[...].astype(x_btd.dtype)
    return y


class Projection(nnx.Module):
  """A linear map written as one einsum, with an optional bias.

  The einsum is computed as one 2-D matmul: the input's leading (batch) axes
  and its contracted axes are each merged into one, and so are the kernel's
  output and contracted axes. XLA's CPU backend runs the 2-D form about 1.4x
  faster, forward and backward, than the same einsum over [batch, length, ...]
  (benchmarks in the README); on other backends the two compile alike.
  """

  def __init__(self, equation: str, kernel_shape, kernel_axes, bias_shape=None,
               bias_axes=None, *, cfg: ModelConfig, rngs: nnx.Rngs, name: str = ""):
    self.equation = equation
    self.dtype = cfg.compute_jnp_dtype
    init = jax.nn.initializers.normal(cfg.initializer_range)
    self.kernel = _param(rngs, init, kernel_shape, kernel_axes, cfg.param_jnp_dtype)
    self.bias = None if bias_shape is None else _param(
        rngs, jax.nn.initializers.zeros, bias_shape, bias_axes, cfg.param_jnp_dtype)
    # LoRA (neft_jax.models.lora): y += (alpha / r) * B (A x) on the targeted projections.
    if cfg.lora_rank and name in cfg.lora_targets:
      (a_shape, a_axes), (b_shape, b_axes), fan_in = lora.factor_shapes(
          equation, kernel_shape, kernel_axes, cfg.lora_rank)
      dtype = cfg.lora_jnp_dtype
      self.lora_a = lora.LoRAParam(lora.init_a(rngs.params(), a_shape, dtype, fan_in),
                                   logical_axes=a_axes)
      self.lora_b = lora.LoRAParam(jnp.zeros(b_shape, dtype), logical_axes=b_axes)
      self.lora_scale = cfg.lora_alpha / cfg.lora_rank
    else:
      self.lora_a = self.lora_b = None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    y = matmul_einsum(self.equation, x, self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora_a is not None:
      through_a, through_b, _ = lora.einsum_equations(self.equation)
      h = matmul_einsum(through_a, x, self.lora_a[...].astype(self.dtype))
      y = y + self.lora_scale * matmul_einsum(through_b, h, self.lora_b[...].astype(self.dtype))
    return y


def matmul_einsum(equation: str, x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`jnp.einsum(equation, x, kernel)` as one 2-D matmul, for equations of the form
  "<batch><contracted>,<kernel>-><batch><out>": x's leading axes are kept, its
  trailing axes are contracted with the kernel's, and the output ends with the
  kernel's other axes in the kernel's order (as "btd,nhd->btnh")."""
  inputs, out = equation.split("->")
  x_axes, k_axes = inputs.split(",")
  contracted = [a for a in x_axes if a in k_axes]
  batch = x_axes[:len(x_axes) - len(contracted)]
  free = [a for a in k_axes if a not in contracted]
  if (list(x_axes[len(batch):]) != contracted or out != batch + "".join(free)
      or any(a in k_axes for a in batch)):
    return jnp.einsum(equation, x, kernel)
  # The kernel as [out, contracted], its axes in the input's contracted order.
  kernel_fc = jnp.transpose(kernel, [k_axes.index(a) for a in free + contracted])
  free_shape = kernel_fc.shape[:len(free)]
  kernel_fc = kernel_fc.reshape(math.prod(free_shape), -1)
  batch_shape = x.shape[:len(batch)]
  y = jax.lax.dot_general(x.reshape(math.prod(batch_shape), -1), kernel_fc, (((1,), (1,)), ((), ())))
  return y.reshape(*batch_shape, *free_shape)


def rotary_tables(positions_bt: jax.Array, head_dim: int, theta: float, dtype):
  """cos and sin of the rotary angles, [batch, length, 1, head_dim] each.

  Computed in float32 and cast to the compute dtype, as transformers does.
  """
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq_h = 1.0 / (theta**exponents)  # [head_dim / 2]
  angles_bth = positions_bt[..., None].astype(jnp.float32) * inv_freq_h
  angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)  # [b, t, head_dim]
  return (jnp.cos(angles_bth)[:, :, None, :].astype(dtype),
          jnp.sin(angles_bth)[:, :, None, :].astype(dtype))


def apply_rotary(x_btnh: jax.Array, cos, sin) -> jax.Array:
  """Rotates the two halves of each head ("rotate_half", Hugging Face's layout)."""
  first, second = jnp.split(x_btnh, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return x_btnh * cos + rotated * sin


def attention(q_btnh, k_bskh, v_bskh, mask_b1ts, scale=None, *, causal: bool, drop_probs=None):
  """Softmax attention written out: (output [batch, length, heads, head_dim],
  probabilities [batch, heads, length, slots]).

  The same arithmetic as `jax.nn.dot_product_attention(implementation="xla")`:
  logits in float32, masked with -0.7 * float32's max, softmax in float32, the
  probabilities cast back to the values' dtype. The matmuls run with the batch
  and key/value heads as leading axes and the query heads that share a
  key/value head merged with the query positions, which XLA's CPU backend
  runs about twice as fast, forward and backward, as jax's layout. The
  probabilities cost nothing extra unless the caller uses them. `drop_probs`,
  if given, transforms them before they weight the values (dropout), as
  transformers' eager attention does; the returned ones are before it.
  """
  b, t, n, h = q_btnh.shape
  s, k = k_bskh.shape[1], k_bskh.shape[2]
  g = n // k
  scale = h**-0.5 if scale is None else scale
  q_bkgh = jnp.transpose(q_btnh.reshape(b, t, k, g, h), (0, 2, 3, 1, 4)).reshape(b, k, g * t, h)
  k_bksh, v_bksh = jnp.transpose(k_bskh, (0, 2, 1, 3)), jnp.transpose(v_bskh, (0, 2, 1, 3))
  batch_matmul = lambda x, y, contract, dtype: jax.lax.dot_general(
      x, y, (((3,), (contract,)), ((0, 1), (0, 1))), preferred_element_type=dtype)
  logits_bkgts = batch_matmul(q_bkgh, k_bksh, 3, jnp.float32).reshape(b, k, g, t, s)
  logits_bkgts = logits_bkgts * jnp.float32(scale)
  keep = jnp.ones((1, 1, 1, t, s), bool)
  if causal:
    keep = jnp.tril(keep)
  if mask_b1ts is not None:
    keep = keep & mask_b1ts[:, :, None]
  large_negative = -0.7 * jnp.finfo(jnp.float32).max
  probs_bkgts = jax.nn.softmax(jnp.where(keep, logits_bkgts, large_negative), axis=-1)
  probs_bkgts = probs_bkgts.astype(v_bskh.dtype)
  weights_bkgts = probs_bkgts if drop_probs is None else drop_probs(probs_bkgts)
  encoded_bkgh = batch_matmul(weights_bkgts.reshape(b, k, g * t, s), v_bksh, 2, v_bskh.dtype)
  encoded_btnh = jnp.transpose(encoded_bkgh.reshape(b, k, g, t, h), (0, 3, 1, 2, 4))
  return encoded_btnh.reshape(b, t, n, h), probs_bkgts.reshape(b, n, t, s)


class Attention(nnx.Module):
  """Causal self-attention with grouped-query heads (num_kv_heads <= num_heads)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    qkv_bias = lambda heads, axis: ((heads, h), (axis, "head_dim")) if cfg.qkv_bias else (None, None)
    self.query = Projection("btd,nhd->btnh", (n, h, d), ("heads", "head_dim", "embed"),
                            *qkv_bias(n, "heads"), cfg=cfg, rngs=rngs, name="query")
    self.key = Projection("btd,khd->btkh", (k, h, d), ("kv_heads", "head_dim", "embed"),
                          *qkv_bias(k, "kv_heads"), cfg=cfg, rngs=rngs, name="key")
    self.value = Projection("btd,khd->btkh", (k, h, d), ("kv_heads", "head_dim", "embed"),
                            *qkv_bias(k, "kv_heads"), cfg=cfg, rngs=rngs, name="value")
    out_bias = ((d,), ("embed",)) if cfg.out_bias else (None, None)
    self.out = Projection("btnh,dnh->btd", (d, n, h), ("embed", "heads", "head_dim"),
                          *out_bias, cfg=cfg, rngs=rngs, name="out")
    self.use_rope = cfg.positions == "rope"
    self.scale = cfg.attention_scale
    self.implementation = cfg.attention

  def __call__(self, x_btd: jax.Array, rotary, mask_b1ts: jax.Array | None, kv=None,
               cache_index=None, dropout=None, with_probs: bool = False):
    """Attention output; with a layer's (keys, values) cache, also the updated cache.

    Without a cache, attention is causal over the input, and `mask_b1ts` only
    removes padding and other packed segments. With one, the new keys and
    values are written at slot `cache_index` and the queries attend to every
    slot that `mask_b1ts` allows (it then carries the causal part too).
    `dropout` (a layer's `neft_jax.dropout.Dropout`) drops the probabilities.
    `with_probs` (analysis, without a cache): also the attention probabilities
    [batch, heads, query, key], computed explicitly whatever `cfg.attention` is.
    """
    q_btnh, k_btkh, v_btkh = self.query(x_btd), self.key(x_btd), self.value(x_btd)
    if self.use_rope:
      q_btnh, k_btkh = apply_rotary(q_btnh, *rotary), apply_rotary(k_btkh, *rotary)
    q_btnh = sharding.constrain(q_btnh, ("batch", "length", "heads", "head_dim"))
    if kv is None:
      k_bskh, v_bskh = k_btkh, v_btkh
    else:  # [batch, slots, kv_heads, head_dim]
      k_bskh = jax.lax.dynamic_update_slice_in_dim(kv[0], k_btkh.astype(kv[0].dtype), cache_index, 1)
      v_bskh = jax.lax.dynamic_update_slice_in_dim(kv[1], v_btkh.astype(kv[1].dtype), cache_index, 1)
    k_bskh = sharding.constrain(k_bskh, ("batch", "length", "kv_heads", "head_dim"))
    v_bskh = sharding.constrain(v_bskh, ("batch", "length", "kv_heads", "head_dim"))
    k_bskh, v_bskh = k_bskh.astype(q_btnh.dtype), v_bskh.astype(q_btnh.dtype)
    drop_probs = dropout is not None and dropout.on("attention_probs")
    probs_bnts = None
    if self.implementation == "cudnn" and not drop_probs and not with_probs:
      # Causal masking comes from is_causal, so that cuDNN skips the masked blocks.
      encoded_btnh = jax.nn.dot_product_attention(
          q_btnh, k_bskh, v_bskh, mask=mask_b1ts, scale=self.scale, is_causal=kv is None,
          implementation="cudnn")
    else:
      encoded_btnh, probs_bnts = attention(
          q_btnh, k_bskh, v_bskh, mask_b1ts, self.scale, causal=kv is None,
          drop_probs=(lambda p: dropout("attention_probs", p)) if drop_probs else None)
    out_btd = self.out(encoded_btnh)
    if with_probs:
      return out_btd, probs_bnts
    return out_btd if kv is None else (out_btd, (k_bskh, v_bskh))


class MLP(nnx.Module):
  """SwiGLU-style gated MLP (Llama, Qwen2) or a plain two-layer MLP (GPT-2)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, m = cfg.embed_dim, cfg.mlp_dim
    bias = lambda size, axis: ((size,), (axis,)) if cfg.mlp_bias else (None, None)
    if cfg.mlp == "gated":
      self.gate = Projection("btd,md->btm", (m, d), ("mlp", "embed"), *bias(m, "mlp"),
                             cfg=cfg, rngs=rngs, name="gate")
    self.up = Projection("btd,md->btm", (m, d), ("mlp", "embed"), *bias(m, "mlp"),
                         cfg=cfg, rngs=rngs, name="up")
    self.down = Projection("btm,dm->btd", (d, m), ("embed", "mlp"), *bias(d, "embed"),
                           cfg=cfg, rngs=rngs, name="down")
    self.gated = cfg.mlp == "gated"
    self.activation = cfg.activation

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    if self.gated:
      h_btm = act(self.gate(x_btd)) * self.up(x_btd)
    else:
      h_btm = act(self.up(x_btd))
    h_btm = sharding.constrain(h_btm, ("batch", "length", "mlp"))
    return self.down(h_btm)


class Block(nnx.Module):
  """Pre-norm residual block: attention, then MLP."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = Norm(cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = Norm(cfg, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_btd, rotary, mask_b1ts, kv=None, cache_index=None, dropout=None,
               with_probs: bool = False):
    """The block's output; with a cache, also the updated cache; `with_probs`: also
    the attention probabilities (see `Attention`)."""
    attended = self.attn(self.attn_norm(x_btd), rotary, mask_b1ts, kv, cache_index, dropout,
                         with_probs)
    extra = None
    if kv is not None or with_probs:
      attended, extra = attended  # the updated cache, or the probabilities
    site = dropout if dropout is not None else (lambda kind, y: y)  # on both residual branches
    x_btd = x_btd + site("attention_output", attended)
    x_btd = x_btd + site("mlp_output", self.mlp(self.mlp_norm(x_btd)))
    x_btd = sharding.constrain(x_btd, ("batch", "length", "embed"))
    return x_btd if extra is None else (x_btd, extra)


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
  """A Block whose every parameter has a leading [layers] axis, each layer drawn
  with its own key (one vmapped init, so tracing cost does not grow with depth)."""
  graphdefs = []

  def init_layer(key):
    graphdef, state = nnx.split(Block(cfg, rngs=nnx.Rngs(params=key)))
    graphdefs.append(graphdef)
    return state

  stacked = jax.vmap(init_layer)(jax.random.split(rngs.params(), cfg.num_layers))
  stacked = jax.tree.map(
      lambda v: v.replace(logical_axes=("layers",) + v.get_metadata("logical_axes")),
      stacked, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdefs[0], stacked)


def default_positions(input_shape, attention_mask_bt=None, segment_ids_bt=None) -> jax.Array:
  """Positions restart at 0 in every packed segment and skip left padding."""
  batch, length = input_shape
  index_bt = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  if segment_ids_bt is not None:
    is_start = jnp.concatenate(
        [jnp.ones((batch, 1), bool), segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=1)
    start_bt = jax.lax.cummax(jnp.where(is_start, index_bt, 0), axis=1)
    return index_bt - start_bt
  if attention_mask_bt is not None:
    return jnp.maximum(jnp.cumsum(attention_mask_bt.astype(jnp.int32), axis=1) - 1, 0)
  return index_bt


def padding_and_segment_mask(attention_mask_bt=None, segment_ids_bt=None):
  """[batch, 1, query, key] booleans: the key is real and in the query's segment.

  Returns None when neither input is given (plain causal attention). Segment
  id 0 marks padding in a packed row.
  """
  mask_b1ts = None
  if attention_mask_bt is not None:
    mask_b1ts = attention_mask_bt.astype(bool)[:, None, None, :]
  if segment_ids_bt is not None:
    same_segment = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
    same_segment &= (segment_ids_bt != 0)[:, None, :]
    mask_b1ts = same_segment[:, None] if mask_b1ts is None else mask_b1ts & same_segment[:, None]
  return mask_b1ts


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for decoding, in `slots` positions per row.

  Rows are aligned: slot i holds the i-th token of every row (prompts are
  left-padded), and `valid` says which slots hold a real token.
  """
  key: jax.Array  # [layers, batch, slots, kv_heads, head_dim]
  value: jax.Array
  valid: jax.Array  # [batch, slots] bool
  index: jax.Array  # int32 scalar: the next slot to write

  @classmethod
  def empty(cls, cfg: ModelConfig, batch: int, slots: int) -> "KVCache":
    shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
    return cls(jnp.zeros(shape, cfg.compute_jnp_dtype), jnp.zeros(shape, cfg.compute_jnp_dtype),
               jnp.zeros((batch, slots), bool), jnp.zeros((), jnp.int32))


def cache_mask(cache: KVCache, new_valid_bt: jax.Array):
  """(updated valid slots, [batch, 1, new, slots] mask): real keys up to each query's slot."""
  length = new_valid_bt.shape[1]
  valid_bs = jax.lax.dynamic_update_slice_in_dim(cache.valid, new_valid_bt, cache.index, axis=1)
  query_slots_t = cache.index + jnp.arange(length)
  key_slots_s = jnp.arange(valid_bs.shape[1])
  causal_ts = key_slots_s[None, :] <= query_slots_t[:, None]
  return valid_bs, valid_bs[:, None, None, :] & causal_ts[None, None]


def output_logits(hidden_btd: jax.Array, head_vd: jax.Array) -> jax.Array:
  """The output layer: float32 logits [batch, length, vocab] of final-normed hidden states."""
  logits_btv = jnp.einsum("btd,vd->btv", hidden_btd, head_vd.astype(hidden_btd.dtype),
                          preferred_element_type=jnp.float32)
  return sharding.constrain(logits_btv, ("batch", "length", "vocab"))


class Transformer(nnx.Module):
  """Decoder-only language model: token ids in, float32 logits out."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    init = jax.nn.initializers.normal(cfg.initializer_range)
    dtype = cfg.param_jnp_dtype
    self.embed = _param(rngs, init, (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"), dtype)
    if cfg.positions == "learned":
      self.pos_embed = _param(rngs, init, (cfg.max_positions, cfg.embed_dim),
                              ("positions", "embed"), dtype)
    self.layers = stacked_blocks(cfg, rngs)
    self.final_norm = Norm(cfg, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, init, (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"), dtype)

  def embed_tokens(self, input_ids_bt: jax.Array) -> jax.Array:
    """Token embeddings, [batch, length, embed], in the compute dtype.

    This is where NEFTune adds its noise: on the token embeddings, before the
    learned positions of GPT-2 are added.
    """
    x_btd = jnp.take(self.embed[...], input_ids_bt, axis=0).astype(self.config.compute_jnp_dtype)
    return sharding.constrain(x_btd, ("batch", "length", "embed"))

  def __call__(self, input_ids=None, attention_mask=None, segment_ids=None, positions=None,
               *, embeddings=None, cache: KVCache | None = None, dropout=None):
    """Logits [batch, length, vocab] in float32 (and the updated cache, if given one).

    The arguments are those of `hidden_states`.
    """
    hidden = self.hidden_states(input_ids, attention_mask, segment_ids, positions,
                                embeddings=embeddings, cache=cache, dropout=dropout)
    if cache is None:
      return output_logits(hidden, self.head())
    hidden_btd, cache = hidden
    return output_logits(hidden_btd, self.head()), cache

  def head(self) -> jax.Array:
    """The output layer's [vocab, embed] weights: the token embeddings when tied."""
    return (self.embed if self.config.tie_embeddings else self.lm_head)[...]

  def hidden_states(self, input_ids=None, attention_mask=None, segment_ids=None, positions=None,
                    *, embeddings=None, cache: KVCache | None = None, dropout=None):
    """The final-normed hidden states [batch, length, embed] that the output layer
    maps to logits (and the updated cache, if given one).

    Args:
      input_ids: [batch, length] token ids (or pass `embeddings` instead).
      attention_mask: [batch, length], 1 for real tokens, 0 for padding.
      segment_ids: [batch, length] packed-sequence ids; a token attends only
        within its own segment, and 0 marks padding.
      positions: [batch, length]; by default they restart in every segment.
      embeddings: [batch, length, embed] token embeddings from `embed_tokens`,
        possibly with noise added.
      cache: keys and values of earlier tokens (see `neft_jax.generate`): the
        input continues the cache's rows at slot `cache.index`; then pass
        `positions`, and `attention_mask` marks which new tokens are real.
        Returns (hidden states, cache).
      dropout: a `neft_jax.dropout.Dropout` for training (None: no dropout):
        its key and the rates of the sites that are on.
    """
    x_btd, rotary = self._layers_input(input_ids, attention_mask, segment_ids, positions,
                                       embeddings, dropout)
    if cache is None:
      mask_b1ts = padding_and_segment_mask(attention_mask, segment_ids)
      x_btd, _ = self._run_layers(x_btd, rotary, mask_b1ts, dropout=dropout)
    else:
      new_valid_bt = (jnp.ones(x_btd.shape[:2], bool) if attention_mask is None
                      else attention_mask.astype(bool))
      valid_bs, mask_b1ts = cache_mask(cache, new_valid_bt)
      x_btd, (keys, values) = self._run_layers(x_btd, rotary, mask_b1ts,
                                               (cache.key, cache.value), cache.index)
      cache = KVCache(keys, values, valid_bs, cache.index + x_btd.shape[1])
    x_btd = self.final_norm(x_btd)
    return x_btd if cache is None else (x_btd, cache)

  def intermediates(self, input_ids=None, attention_mask=None, segment_ids=None, positions=None,
                    *, embeddings=None):
    """Every layer's hidden states and attention probabilities, for analysis.

    The arguments are those of `hidden_states` (no cache, no dropout). Returns
    float32 arrays (hidden states [layers + 1, batch, length, embed], attention
    probabilities [layers, batch, heads, query, key]), the convention of
    transformers' `output_hidden_states=True` and `output_attentions=True`
    (with `attn_implementation="eager"`), which is the same for GPT-2, Llama
    and Qwen2: entry 0 is the first block's input (token embeddings, plus the
    learned positions for GPT-2), entry i the residual stream after block i,
    except the last, which is the final-normed output (the one the output
    layer maps to logits) instead of the last block's raw output.

    The probabilities are a softmax written out, also under
    `cfg.attention="cudnn"`, so they cost [layers, batch, heads, length,
    length] memory; training and generation never compute them. Rows of
    padding queries (and segment 0 in packed rows) are meaningless.
    """
    x_btd, rotary = self._layers_input(input_ids, attention_mask, segment_ids, positions, embeddings)
    mask_b1ts = padding_and_segment_mask(attention_mask, segment_ids)
    _, (outputs_lbtd, probs_lbnts) = self._run_layers(x_btd, rotary, mask_b1ts, with_probs=True)
    last_btd = self.final_norm(outputs_lbtd[-1])
    hidden_lbtd = jnp.concatenate([x_btd[None], outputs_lbtd[:-1], last_btd[None]])
    return hidden_lbtd.astype(jnp.float32), probs_lbnts.astype(jnp.float32)

  def _layers_input(self, input_ids, attention_mask, segment_ids, positions, embeddings,
                    dropout=None):
    """The first block's input [batch, length, embed] and the rotary tables (or None)."""
    cfg = self.config
    x_btd = self.embed_tokens(input_ids) if embeddings is None else embeddings
    x_btd = x_btd.astype(cfg.compute_jnp_dtype)
    if positions is None:
      positions = default_positions(x_btd.shape[:2], attention_mask, segment_ids)
    if cfg.positions == "learned":
      x_btd = x_btd + jnp.take(self.pos_embed[...], positions, axis=0).astype(x_btd.dtype)
    if dropout is not None:
      x_btd = dropout("embed", x_btd)
    rotary = None
    if cfg.positions == "rope":
      rotary = rotary_tables(positions, cfg.head_dim, cfg.rope_theta, x_btd.dtype)
    return x_btd, rotary

  def _run_layers(self, x_btd, rotary, mask_b1ts, kv=None, cache_index=None, dropout=None,
                  with_probs=False):
    """The blocks over x, scanned or unrolled; with (keys, values) stacked over
    layers, also the updated stack; `with_probs`: also every block's output and
    attention probabilities, stacked over layers. Each layer's dropout rates are
    scanned over with its parameters, and its key is folded from the layer index."""
    cfg = self.config
    graphdef, stacked = nnx.split(self.layers)
    layer_dropout = None if dropout is None else (jnp.arange(cfg.num_layers), dropout.layer_rates())

    def layer(x_btd, per_layer):
      params, layer_kv, drop = per_layer
      block = nnx.merge(graphdef, params)
      drop = None if drop is None else dropout.layer(*drop)
      if with_probs:
        x_btd, probs_bnts = block(x_btd, rotary, mask_b1ts, with_probs=True)
        return x_btd, (x_btd, probs_bnts)
      if layer_kv is None:
        return block(x_btd, rotary, mask_b1ts, dropout=drop), None
      return block(x_btd, rotary, mask_b1ts, layer_kv, cache_index)

    if cfg.remat != "none":
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      return jax.lax.scan(layer, x_btd, (stacked, kv, layer_dropout))
    per_layer_outputs = []
    for i in range(cfg.num_layers):
      at_layer = lambda tree: jax.tree.map(lambda p: p[i], tree)
      layer_kv = None if kv is None else (kv[0][i], kv[1][i])
      x_btd, outputs = layer(x_btd, (at_layer(stacked), layer_kv, at_layer(layer_dropout)))
      per_layer_outputs.append(outputs)
    if per_layer_outputs[0] is None:
      return x_btd, None
    return x_btd, jax.tree.map(lambda *ys: jnp.stack(ys), *per_layer_outputs)  # as scan's
