"""Transformer building blocks shaped like CLIP's, so CLIP weights map onto them one to one.

Every block is pre-LayerNorm, as in OpenAI CLIP and `transformers.CLIPEncoderLayer`::

    x = x + attn(ln_1(x), mask)
    x = x + mlp(ln_2(x))          mlp(h) = fc2(act(fc1(h)))

Attention keeps separate `q_proj`, `k_proj`, `v_proj`, `out_proj` Linear layers with
bias (HF CLIP's layout). Parameters are always float32; an optional compute `dtype`
(e.g. `jnp.bfloat16`) is used for activations and matmuls, while LayerNorm statistics
and the attention softmax are computed in float32.

Shapes: B batch, L sequence length, D model width, H heads, Dh = D / H.

Compute options (how, not what, is computed; every option gives the same function up to
floating-point rounding, and none changes the parameters or their names):

* ``attention`` (:data:`ATTENTION_IMPLEMENTATIONS`): ``"xla"`` is the einsum-softmax-einsum
  written out below; ``"dot_product_attention"`` calls ``jax.nn.dot_product_attention``
  with ``implementation=None`` (the library's choice: XLA in jax 0.10); ``"cudnn"`` asks
  it for cuDNN's fused flash attention (NVIDIA GPUs, bf16/fp16 only; the causal mask is
  never materialised and key padding is passed as per-row lengths, which assumes
  right-padded rows: every tokenizer of this repository pads on the right).
* ``remat`` (:data:`REMAT_POLICIES`): ``"none"``; ``"full"`` recomputes each block's
  activations in the backward pass (``jax.checkpoint``, nothing saved); ``"dots"`` saves
  the outputs of the weight matmuls (``dots_with_no_batch_dims_saveable``) and recomputes
  attention scores and elementwise ops.
* ``scan_layers``: run the blocks with one ``jax.lax.scan`` over their parameters stacked
  along a new leading axis at call time, so XLA compiles one block instead of L. The
  parameters keep their per-block layout (``blocks.i.*``, what checkpoints and the
  importers read); the stack costs one copy of the blocks' parameters per step.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATION_NAMES = ("quick_gelu", "gelu", "gelu_tanh")
ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product_attention", "cudnn")
REMAT_POLICIES = ("none", "full", "dots")


def check_compute_options(where: str, attention: str, remat: str, scan_layers) -> None:
    """ValueError naming ``where`` for an unknown attention implementation or remat policy."""
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"{where}.attention={attention!r}; allowed: {list(ATTENTION_IMPLEMENTATIONS)}")
    if remat not in REMAT_POLICIES:
        raise ValueError(f"{where}.remat={remat!r}; allowed: {list(REMAT_POLICIES)}")
    if not isinstance(scan_layers, bool):
        raise ValueError(f"{where}.scan_layers={scan_layers!r} must be a bool")


def _remat_policy(remat: str):
    if remat == "full":
        return jax.checkpoint_policies.nothing_saveable
    if remat == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    raise ValueError(f"remat={remat!r}; allowed: {list(REMAT_POLICIES)}")


@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """A self-attention mask kept in parts, so fused kernels need not materialise it.

    ``padding``: bool/int [B, L] (nonzero = real token: padded keys get no weight) or None;
    ``causal``: query i may attend key j only if j <= i. :meth:`dense` is the same mask
    as one bool array broadcastable to [B, H, L, L] (True = may attend).
    """

    padding: jax.Array | None
    causal: bool

    def dense(self, length: int) -> jax.Array | None:
        mask = None if self.padding is None else key_padding_mask(self.padding)
        if self.causal:
            mask = causal_mask(length) if mask is None else mask & causal_mask(length)
        return mask


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's QuickGELU: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))."""
    return jax.nn.gelu(x, approximate=False)


def gelu_tanh(x: jax.Array) -> jax.Array:
    """Tanh-approximated GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return jax.nn.gelu(x, approximate=True)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The elementwise activation called `name`: 'quick_gelu', 'gelu' (exact erf) or 'gelu_tanh'."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"act={name!r} is not a known activation; allowed: {list(ACTIVATION_NAMES)}")
    return _ACTIVATIONS[name]


def layer_norm(dim: int, eps: float, *, rngs: nnx.Rngs, dtype=None) -> nnx.LayerNorm:
    """LayerNorm over the last axis with scale and bias, like `torch.nn.LayerNorm(dim, eps)`.

    Uses the two-pass variance (E[(x - mean)^2]) so float32 results match PyTorch closely.
    """
    return nnx.LayerNorm(
        dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs
    )


class Linear(nnx.Linear):
    """``nnx.Linear`` (same parameters, names and numerics) that multiplies an input of
    any rank ``[..., in]`` as one 2-D product ``[M, in] @ [in, out]`` (M = prod(...)).

    Same function; the reason is the backward pass. For a 3-D input the weight gradient
    ``x^T dy`` contracts two axes (batch and sequence); on XLA's CPU backend that product
    ran 3.7x slower than the same contraction over one flattened axis (value and gradient
    of ``sum((x W)^2)``, x [128, 24, 64], W [64, 256]: 3.85 ms against 1.03 ms), and the
    demo's towers' value and gradient 6% (ViT) and 14% (text) faster with it, jax 0.10.2 on
    a 2-core CPU. On accelerators the reshapes are free (bitcasts of contiguous axes).
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if inputs.ndim <= 2:
            return super().__call__(inputs)
        leading = inputs.shape[:-1]
        out = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return out.reshape(*leading, out.shape[-1])


def linear(in_dim: int, out_dim: int, *, rngs: nnx.Rngs, dtype=None, use_bias: bool = True) -> Linear:
    """Dense layer y = x W + b with W: [in_dim, out_dim] float32 parameters (:class:`Linear`)."""
    return Linear(in_dim, out_dim, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class MLP(nnx.Module):
    """Two-layer perceptron: fc2(act(fc1(x))).  x: [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, act: str, *, rngs: nnx.Rngs, dtype=None):
        self.act_name = act
        self.act = activation(act)
        self.fc1 = linear(in_dim, hidden_dim, rngs=rngs, dtype=dtype)
        self.fc2 = linear(hidden_dim, out_dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class MultiHeadAttention(nnx.Module):
    """Multi-head scaled dot-product self-attention with separate q/k/v/out projections.

    For each head h, with q = x Wq + bq, k = x Wk + bk, v = x Wv + bv split into H heads::

        a_h = softmax(q_h k_h^T / sqrt(Dh) + M) v_h        M = 0 where mask else -inf (finite)
        out = concat_h(a_h) Wo + bo

    `mask` is boolean, broadcastable to [B, H, L, L] with [query, key] in the last two axes,
    or an :class:`AttentionMask`; True means "may attend". A query row whose keys are all
    masked gets uniform weights (a finite large negative bias is used, so no NaNs appear;
    with ``attention="cudnn"`` such rows are undefined).

    ``attention`` picks the implementation (module docstring); the logits and the softmax
    are float32 in all of them.
    """

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None, attention: str = "xla"):
        if num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must be positive and divide dim={dim}")
        if attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention={attention!r}; allowed: {list(ATTENTION_IMPLEMENTATIONS)}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dtype = dtype
        self.attention = attention
        self.q_proj = linear(dim, dim, rngs=rngs, dtype=dtype)
        self.k_proj = linear(dim, dim, rngs=rngs, dtype=dtype)
        self.v_proj = linear(dim, dim, rngs=rngs, dtype=dtype)
        self.out_proj = linear(dim, dim, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | AttentionMask | None = None) -> jax.Array:
        """x: [B, L, D], mask: bool broadcastable to [B, H, L, L], an AttentionMask or None -> [B, L, D]."""
        batch, length, _ = x.shape
        split = (batch, length, self.num_heads, self.head_dim)
        q = self.q_proj(x).reshape(split)
        k = self.k_proj(x).reshape(split)
        v = self.v_proj(x).reshape(split)
        if self.attention == "xla":
            attended = self._xla_attention(q, k, v, mask)
        else:
            attended = self._fused_attention(q, k, v, mask)
        return self.out_proj(attended.reshape(batch, length, self.dim))

    def _xla_attention(self, q, k, v, mask):
        if isinstance(mask, AttentionMask):
            mask = mask.dense(q.shape[1])
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (self.head_dim**-0.5)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v)

    def _fused_attention(self, q, k, v, mask):
        """``jax.nn.dot_product_attention`` on [B, L, H, Dh]: the causal part of an
        AttentionMask as ``is_causal``; key padding as a bool mask (``dot_product_attention``)
        or as per-row lengths (``cudnn``, right-padded rows)."""
        implementation = "cudnn" if self.attention == "cudnn" else None
        is_causal, dense, lengths = False, None, None
        if isinstance(mask, AttentionMask):
            is_causal = mask.causal
            if mask.padding is not None:
                if implementation == "cudnn":
                    lengths = jnp.sum(mask.padding != 0, axis=1).astype(jnp.int32)
                else:
                    dense = key_padding_mask(mask.padding)
        elif mask is not None:
            dense = jnp.asarray(mask, bool)
            dense = dense.reshape((1,) * (4 - dense.ndim) + dense.shape)
        return jax.nn.dot_product_attention(
            q, k, v, mask=dense, is_causal=is_causal, key_value_seq_lengths=lengths,
            scale=self.head_dim**-0.5, implementation=implementation,
        )


class TransformerBlock(nnx.Module):
    """Pre-LN residual block: x + attn(ln_1(x)), then + mlp(ln_2(x)).  [B, L, D] -> [B, L, D]."""

    def __init__(
        self, dim: int, num_heads: int, mlp_dim: int, act: str, eps: float, *, rngs: nnx.Rngs, dtype=None,
        attention: str = "xla",
    ):
        self.ln_1 = layer_norm(dim, eps, rngs=rngs, dtype=dtype)
        self.attn = MultiHeadAttention(dim, num_heads, rngs=rngs, dtype=dtype, attention=attention)
        self.ln_2 = layer_norm(dim, eps, rngs=rngs, dtype=dtype)
        self.mlp = MLP(dim, mlp_dim, dim, act, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | AttentionMask | None = None) -> jax.Array:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    """A stack of `layers` TransformerBlocks held in `self.blocks` (an nnx.List).  [B, L, D] -> [B, L, D].

    No final LayerNorm: the encoders own theirs (`ln_post`, `ln_final`), as in CLIP.
    `attention`, `remat` and `scan_layers` are the compute options of the module docstring.
    """

    def __init__(
        self,
        dim: int,
        layers: int,
        num_heads: int,
        mlp_dim: int,
        act: str,
        eps: float,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        attention: str = "xla",
        remat: str = "none",
        scan_layers: bool = False,
    ):
        if layers < 0:
            raise ValueError(f"layers={layers} must be >= 0")
        check_compute_options("Transformer", attention, remat, scan_layers)
        self.remat = remat
        self.scan_layers = scan_layers
        self.blocks = nnx.List(
            [
                TransformerBlock(dim, num_heads, mlp_dim, act, eps, rngs=rngs, dtype=dtype, attention=attention)
                for _ in range(layers)
            ]
        )

    def __call__(self, x: jax.Array, mask: jax.Array | AttentionMask | None = None) -> jax.Array:
        if self.remat == "none" and not (self.scan_layers and len(self.blocks) > 1):
            for block in self.blocks:
                x = block(x, mask)
            return x
        splits = [nnx.split(block) for block in self.blocks]
        if not (self.scan_layers and len(self.blocks) > 1):
            for graphdef, state in splits:
                x = _block_function(graphdef, self.remat, mask, prevent_cse=True)(state, x)
            return x
        return _scan_blocks(splits, self.remat, mask, x)


def _block_function(graphdef, remat: str, mask, *, prevent_cse: bool):
    """``(block state, x) -> block(x, mask)``, under ``jax.checkpoint`` unless remat is 'none'."""

    def apply(state, x):
        return nnx.merge(graphdef, state)(x, mask)

    if remat == "none":
        return apply
    return jax.checkpoint(apply, policy=_remat_policy(remat), prevent_cse=prevent_cse)


def _scan_blocks(splits, remat: str, mask, x):
    """The blocks of ``splits`` ([(graphdef, state)] of identical structure) applied in
    order by one ``jax.lax.scan`` over their parameters, stacked along a new axis 0."""
    graphdef, first = splits[0]
    treedef = jax.tree.structure(first)
    leaves = []
    for other_graphdef, state in splits:
        if other_graphdef != graphdef or jax.tree.structure(state) != treedef:
            raise ValueError("scan_layers needs blocks of identical structure")
        leaves.append(jax.tree.leaves(state))
    stacked = [jnp.stack(layer_values) for layer_values in zip(*leaves)]
    apply = _block_function(graphdef, remat, mask, prevent_cse=False)

    def body(carry, layer_leaves):
        return apply(jax.tree.unflatten(treedef, layer_leaves), carry), None

    out, _ = jax.lax.scan(body, x, stacked)
    return out


def causal_mask(length: int) -> jax.Array:
    """Lower-triangular bool [1, 1, L, L]: query i may attend key j iff j <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def key_padding_mask(attention_mask_bl: jax.Array) -> jax.Array:
    """Bool [B, 1, 1, L] from a [B, L] int/bool mask (nonzero = real token): padded keys get no weight."""
    return (attention_mask_bl != 0)[:, None, None, :]
