"""FJSPH's training step in PyTorch: the baseline of ``launch/benchmark.py --suite=train``.

The encoders are ``transformers.CLIPModel`` built from a ``CLIPConfig`` of the same sizes
as our towers (:func:`clip_config`; random init, nothing from the hub); the hash heads,
the interaction block and every loss term are written here in PyTorch from the formulas
of ``fjsph_jax/methods/fjsph/objectives.py``, ``step.py`` and ``similarity.py``:

    f_img = visual_projection(post_layernorm(ViT(pixels))[cls])       [B, D]
    f_txt = text_projection(final_layer_norm(TextTransformer(ids))[t_b])  (t_b: our pool)
    u, v  = tanh(fc2(gelu(fc1(f))))  per modality; z = fused head of the interaction block
    L = w_con InfoNCE(f_img, f_txt; exp(min(s, log 100)))
      + w_sim  mean((u v^T / K - T_pair)^2)                 T = floor + (1 - floor) S
      + a w_bank (bank_mse(u) + bank_mse(v)) / 2            low-rank, cached statistics
      + a w_q  (mean((u - B_idx)^2) + mean((v - B_idx)^2)) / 2
      + w_bal  (mean_k(mean_b u)^2 + mean_k(mean_b v)^2) / 2
      + w_fused (mean((z z^T / K - T_pair)^2) + a mean((z - B_idx)^2))

The bank term uses the same low-rank identity as ours (:func:`bank_similarity_mse`,
:func:`apply_target_rows`, :func:`target_row_squared_norms`) on the statistics of the
bank (:class:`TorchBankStatistics`, converted from ours: the discrete code update is
shared code, run by JAX for both sides). The optimiser is ``torch.optim.AdamW`` with the
same per-group learning rates, weight-decay mask (``ndim >= 2``), global-norm clipping
and schedule as ``fjsph_jax.methods.fjsph.build.build_optimizer``.

Same initial weights: :func:`load_fjsph_params` copies an FJSPH model's parameters (our
nnx model) into a :class:`TorchFJSPH`: the towers through the inverse of the transformers
importer's key map (``fjsph_jax.weights.hf_clip.hf_clip_rules``; Linear kernels and the
patch convolution transposed back), the heads and the interaction block by name.
``tests/test_torch_baseline.py`` checks the round trip and that both models give the
same loss terms on the same batch.

Text pooling follows our ``TextConfig.pool`` (HF's own pooled output is not used), so any
of our text presets maps; the vision tower must be CLIP-shaped (``pool='cls'``,
``ln_pre``, no projection bias) and the text tower causal with masked padding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# the stacked layout of the similarity statistics is ours; only the arithmetic is torch's
from fjsph_jax.similarity import cluster_offsets, pair_offsets

MAX_LOG_SCALE = math.log(100.0)
NORM_EPS = 1e-12

# Our activation names -> transformers' hidden_act.
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"activation {name!r}; allowed: {sorted(HF_ACTIVATIONS)}")


# ------------------------------------------------------------------------- model


def clip_config(vision, text, *, logit_scale: float = math.log(1 / 0.07)):
    """``transformers.CLIPConfig`` of our (ViTConfig, TextConfig) sizes."""
    from transformers import CLIPConfig

    if vision.pool != "cls" or not vision.ln_pre or vision.proj_bias:
        raise ValueError(f"the CLIP baseline needs a CLIP-shaped ViT (pool='cls', ln_pre, no proj bias): {vision}")
    if not text.causal or not text.mask_padding or text.proj_bias:
        raise ValueError(f"the CLIP baseline needs a causal text tower with masked padding: {text}")
    if vision.output_dim is None or vision.output_dim != text.output_dim:
        raise ValueError(f"vision.output_dim={vision.output_dim} must equal text.output_dim={text.output_dim}")
    return CLIPConfig(
        text_config=dict(
            vocab_size=text.vocab_size, hidden_size=text.width, intermediate_size=text.mlp_dim,
            num_hidden_layers=text.layers, num_attention_heads=text.heads,
            max_position_embeddings=text.context_length, hidden_act=HF_ACTIVATIONS[text.act],
            layer_norm_eps=text.eps, attention_dropout=0.0,
            # eos 2 is transformers' legacy value (argmax pooling); its pooled output is unused.
            bos_token_id=0, eos_token_id=2, pad_token_id=1,
        ),
        vision_config=dict(
            image_size=vision.image_size, patch_size=vision.patch_size, hidden_size=vision.width,
            intermediate_size=vision.mlp_dim, num_hidden_layers=vision.layers,
            num_attention_heads=vision.heads, hidden_act=HF_ACTIVATIONS[vision.act],
            layer_norm_eps=vision.eps, num_channels=3, attention_dropout=0.0,
        ),
        projection_dim=vision.output_dim,
        logit_scale_init_value=logit_scale,
    )


class TorchHashHead(nn.Module):
    """``tanh(fc2(act(fc1(x))))`` (or ``tanh(fc2(x))`` without hidden layer), float32 out."""

    def __init__(self, in_dim: int, bits: int, hidden_dim: int, act: str):
        super().__init__()
        self.act = activation(act)
        self.fc1 = nn.Linear(in_dim, hidden_dim) if hidden_dim else None
        self.fc2 = nn.Linear(hidden_dim or in_dim, bits)

    def forward(self, x):
        hidden = x if self.fc1 is None else self.act(self.fc1(x))
        return torch.tanh(self.fc2(hidden).float())


class TorchBlock(nn.Module):
    """Our pre-LN ``TransformerBlock`` (no mask): x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, act: str, eps: float):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)
        self.act = activation(act)

    def forward(self, x):
        b, length, d = x.shape
        h = self.ln_1(x)
        split = lambda t: t.view(b, length, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h)))
        x = x + self.out_proj(attended.transpose(1, 2).reshape(b, length, d))
        return x + self.fc2(self.act(self.fc1(self.ln_2(x))))


class TorchInteraction(nn.Module):
    """Our ``ModalityInteraction``: stack(image, text) + modality embedding -> blocks -> ln -> mean."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_dim: int, act: str = "gelu", eps: float = 1e-5):
        super().__init__()
        self.modality_embedding = nn.Parameter(torch.zeros(2, dim))
        self.blocks = nn.ModuleList([TorchBlock(dim, heads, mlp_dim, act, eps) for _ in range(layers)])
        self.ln_out = nn.LayerNorm(dim, eps=eps)

    def forward(self, image, text):
        tokens = torch.stack([image, text], dim=1) + self.modality_embedding.to(image.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return self.ln_out(tokens).mean(dim=1)


class TorchFJSPH(nn.Module):
    """FJSPH end to end with ``transformers.CLIPModel`` towers (module docstring).

    Built from our ``FJSPHConfig`` (``fjsph_jax.methods.fjsph.model``); ``attn_implementation``
    is transformers' (``"sdpa"``: torch's fused attention; ``"eager"``).
    """

    def __init__(self, config, *, attn_implementation: str = "sdpa"):
        super().__init__()
        from transformers import CLIPModel

        if config.vision is None or config.text is None:
            raise ValueError("TorchFJSPH is the end-to-end model: FJSPHConfig needs both towers")
        hf_config = clip_config(config.vision, config.text, logit_scale=config.init_logit_scale)
        hf_config._attn_implementation = attn_implementation
        for sub in (hf_config.text_config, hf_config.vision_config):
            sub._attn_implementation = attn_implementation
        self.config = config
        self.clip = CLIPModel(hf_config)
        self.text_pool = config.text.pool
        self.eos_token_id = config.text.eos_token_id
        d, k, hidden = config.feature_dim, config.bits, config.hash_hidden_dim
        self.image_hash = TorchHashHead(d, k, hidden, config.hash_act)
        self.text_hash = TorchHashHead(d, k, hidden, config.hash_act)
        if config.interaction == "transformer":
            self.interaction = TorchInteraction(
                d, config.interaction_layers, config.interaction_heads, config.interaction_mlp_dim or 4 * d)
            self.fused_hash = TorchHashHead(d, k, hidden, config.hash_act)
        else:
            self.interaction = None
            self.fused_hash = None

    @property
    def logit_scale(self):
        return self.clip.logit_scale

    def image_features(self, pixels_nchw):
        pooled = self.clip.vision_model(pixel_values=pixels_nchw).pooler_output
        return self.clip.visual_projection(pooled)

    def text_features(self, input_ids, attention_mask):
        hidden = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.text_pool == "mean_all":
            pooled = hidden.mean(dim=1)
        else:
            positions = pool_positions(input_ids, attention_mask, self.text_pool, self.eos_token_id)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]
        return self.clip.text_projection(pooled)

    def fuse(self, image, text):
        if self.interaction is None:
            return None
        return self.fused_hash(self.interaction(image, text))


def pool_positions(input_ids, attention_mask, pool: str, eos_token_id):
    """Our ``fjsph_jax.models.text.pool_positions`` in torch."""
    if pool == "last":
        return torch.clamp((attention_mask != 0).sum(dim=1) - 1, min=0)
    if pool == "eos":
        return (input_ids == eos_token_id).int().argmax(dim=1)
    if pool == "argmax":
        return input_ids.argmax(dim=1)
    if pool == "first":
        return torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    raise ValueError(f"pool={pool!r}")


# ------------------------------------------------------- weights: ours -> torch


def _to_torch_key_and_value(rule, value: np.ndarray) -> tuple[str, np.ndarray]:
    """The inverse of one hf_clip importer rule: (transformers key, array)."""
    (theirs,) = rule.sources
    if rule.key == "patch_embed.kernel":  # ours [p, p, 3, D] <- theirs [D, 3, p, p]
        return theirs, np.transpose(value, (3, 2, 0, 1))
    if rule.key.endswith(".kernel"):  # Linear: ours [in, out] <- theirs [out, in]
        return theirs, value.T
    return theirs, np.reshape(value, np.shape(value))


def hf_state_dict_from_towers(vision_config, text_config, vision_params: dict, text_params: dict,
                              logit_scale: float) -> dict[str, np.ndarray]:
    """Our flat tower parameters (``weights.params.module_params``) -> a CLIPModel state dict.

    The inverse of ``fjsph_jax.weights.hf_clip.hf_clip_rules``; reading the result back
    with ``apply_rules(state_dict, hf_clip_rules(...))`` gives the inputs bit for bit.
    """
    from fjsph_jax.weights.hf_clip import hf_clip_rules

    params = {"vision": vision_params, "text": text_params,
              "model": {"logit_scale": np.asarray(logit_scale, np.float32)}}
    state = {}
    for rule in hf_clip_rules(vision_config.layers, text_config.layers):
        key, value = _to_torch_key_and_value(rule, np.asarray(params[rule.tower][rule.key]))
        state[key] = np.ascontiguousarray(value, dtype=np.float32)
    return state


def _head_state(prefix: str, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our heads / interaction parameters (``{dotted.key: array}`` under ``prefix``) -> torch names."""
    out = {}
    for key, value in flat.items():
        if not key.startswith(prefix + "."):
            continue
        name = key[len(prefix) + 1:]
        name = name.replace("transformer.blocks.", "blocks.").replace("attn.", "").replace("mlp.", "")
        if name.endswith(".kernel"):
            out[f"{prefix}.{name[:-len('.kernel')]}.weight"] = value.T
        elif name.endswith(".scale"):
            out[f"{prefix}.{name[:-len('.scale')]}.weight"] = value
        else:
            out[f"{prefix}.{name}"] = value
    return out


def flat_params(module) -> dict[str, np.ndarray]:
    """An nnx module's parameters as ``{dotted.key: np.ndarray}`` (float32)."""
    from fjsph_jax.weights.params import module_params

    return module_params(module)


def torch_state_from_fjsph(model) -> dict[str, torch.Tensor]:
    """The full state dict of a TorchFJSPH holding the parameters of our FJSPH ``model``."""
    config = model.config
    flat = flat_params(model)
    vision = {k[len("vision."):]: v for k, v in flat.items() if k.startswith("vision.")}
    text = {k[len("text."):]: v for k, v in flat.items() if k.startswith("text.")}
    state = {f"clip.{k}": v for k, v in hf_state_dict_from_towers(
        config.vision, config.text, vision, text, float(flat["logit_scale"])).items()}
    for prefix in ("image_hash", "text_hash", "fused_hash", "interaction"):
        state.update(_head_state(prefix, flat))
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}


def load_fjsph_params(torch_model: TorchFJSPH, model) -> None:
    """Copies our FJSPH ``model``'s parameters into ``torch_model`` (every parameter must be
    covered; only transformers' non-persistent buffers may be left)."""
    state = torch_state_from_fjsph(model)
    missing, unexpected = torch_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"weights do not match the torch model: missing {missing}, unexpected {unexpected}")


# ------------------------------------------------------------------ losses


def _l2_normalize(x):
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=-1, keepdim=True), min=NORM_EPS**2))


def symmetric_infonce(image, text, log_logit_scale):
    """objectives.symmetric_infonce: CLIP's symmetric cross-entropy, scale exp(min(s, log 100))."""
    image, text = image.float(), text.float()
    scale = torch.exp(torch.clamp(log_logit_scale.float(), max=MAX_LOG_SCALE))
    logits = scale * (_l2_normalize(image) @ _l2_normalize(text).T)
    matched = torch.diagonal(logits)
    image_to_text = (torch.logsumexp(logits, dim=1) - matched).mean()
    text_to_image = (torch.logsumexp(logits, dim=0) - matched).mean()
    return 0.5 * (image_to_text + text_to_image)


def similarity_mse(h_a, h_b, s_ab, *, floor: float):
    inner = h_a.float() @ h_b.float().T / h_a.shape[1]
    return ((inner - (floor + (1.0 - floor) * s_ab)) ** 2).mean()


def similarity_likelihood(h_a, h_b, s_ab, *, scale: float):
    theta = scale * (h_a.float() @ h_b.float().T) / h_a.shape[1]
    return (F.softplus(theta) - s_ab * theta).mean()


def quantization_loss(h, codes):
    return ((h.float() - codes.float()) ** 2).mean()


def bit_balance_loss(h):
    return (h.float().mean(dim=0) ** 2).mean()


def bank_similarity_mse(h, target_codes, target_squares, code_gram, num_items: int):
    """objectives.bank_similarity_mse: mean_{b,n} (h_b . B_n / K - T_bn)^2 without [B, N]."""
    h = h.float()
    bits = h.shape[1]
    quadratic = ((h @ code_gram) * h).sum(dim=1)
    linear = (h * target_codes).sum(dim=1)
    per_row = quadratic / bits**2 - 2.0 * linear / bits + target_squares
    return per_row.sum() / (h.shape[0] * num_items)


# ------------------------------------------------- similarity and bank statistics


class TorchSimilarity(NamedTuple):
    """Our ``JointSimilarity`` (unpadded) as torch tensors."""

    label_factors: torch.Tensor  # [N, C] float32
    cluster_ids: torch.Tensor  # [m, N] int64
    cluster_weights: torch.Tensor  # [m] float32
    eta: float
    cluster_ks: tuple
    num_valid: int

    @classmethod
    def from_jax(cls, sim, device) -> "TorchSimilarity":
        if sim.padded:
            raise ValueError("TorchSimilarity needs an unpadded similarity (one device)")
        as_t = lambda a, dtype: torch.as_tensor(np.array(a), dtype=dtype, device=device)  # noqa: E731
        return cls(as_t(sim.label_factors, torch.float32), as_t(sim.cluster_ids, torch.int64),
                   as_t(sim.cluster_weights, torch.float32), float(sim.eta), tuple(sim.cluster_ks),
                   int(sim.num_valid))


class TorchBankStatistics(NamedTuple):
    """Our ``BankStatistics`` (projections, code gram, target statistics) as tensors."""

    labels: torch.Tensor
    clusters: torch.Tensor
    totals: torch.Tensor
    code_gram: torch.Tensor
    label_gram: torch.Tensor
    label_sums: torch.Tensor
    cluster_labels: torch.Tensor
    cluster_sizes: torch.Tensor
    cluster_pairs: torch.Tensor

    @classmethod
    def from_jax(cls, stats, device) -> "TorchBankStatistics":
        as_t = lambda a: torch.as_tensor(np.array(a), dtype=torch.float32, device=device)  # noqa: E731
        p, t = stats.projections, stats.target
        return cls(as_t(p.labels), as_t(p.clusters), as_t(p.totals), as_t(stats.code_gram),
                   as_t(t.label_gram), as_t(t.label_sums), as_t(t.cluster_labels),
                   as_t(t.cluster_sizes), as_t(t.cluster_pairs))


def pairwise_similarity(sim: TorchSimilarity, idx):
    """S(idx, idx) [B, B] = (1 - eta) N_hat_b N_hat_b^T + eta sum_j w_j [c_j(a) == c_j(b)]."""
    factors, ids = sim.label_factors[idx], sim.cluster_ids[:, idx]
    same = (ids[:, :, None] == ids[:, None, :]).float()
    clustered = torch.einsum("m,mab->ab", sim.cluster_weights, same)
    return (1.0 - sim.eta) * (factors @ factors.T) + sim.eta * clustered


def apply_target_rows(sim: TorchSimilarity, stats: TorchBankStatistics, idx, *, floor: float):
    """similarity.apply_target_rows: (T B)[idx] [B, K] from the cached projections."""
    factors, ids = sim.label_factors[idx], sim.cluster_ids[:, idx]
    label_term = factors @ stats.labels
    cluster_term = torch.zeros_like(label_term)
    for j, offset in enumerate(cluster_offsets(sim.cluster_ks)):
        cluster_term = cluster_term + sim.cluster_weights[j] * stats.clusters[ids[j] + offset]
    similarity_term = (1.0 - sim.eta) * label_term + sim.eta * cluster_term
    return (1.0 - floor) * similarity_term + floor * stats.totals[None, :]


def target_row_squared_norms(sim: TorchSimilarity, stats: TorchBankStatistics, idx, *, floor: float):
    """similarity.target_row_squared_norms: sum_n T[idx, n]^2 [B] from the cached statistics."""
    factors, ids = sim.label_factors[idx], sim.cluster_ids[:, idx]
    eta, weights, ks = sim.eta, sim.cluster_weights, sim.cluster_ks
    offsets = cluster_offsets(ks)
    sizes = [stats.cluster_sizes[ids[j] + offsets[j]] for j in range(len(ks))]
    s1 = (1.0 - eta) * (factors @ stats.label_sums)
    s2 = (1.0 - eta) ** 2 * ((factors @ stats.label_gram) * factors).sum(dim=1)
    same_cluster = torch.zeros_like(s1)
    for j in range(len(ks)):
        s1 = s1 + eta * weights[j] * sizes[j]
        cluster_labels = stats.cluster_labels[ids[j] + offsets[j]]
        s2 = s2 + 2.0 * eta * (1.0 - eta) * weights[j] * (factors * cluster_labels).sum(dim=1)
        same_cluster = same_cluster + weights[j] ** 2 * sizes[j]
    for (i, j), offset in pair_offsets(ks).items():
        both = stats.cluster_pairs[offset + ids[i] * ks[j] + ids[j]]
        same_cluster = same_cluster + 2.0 * weights[i] * weights[j] * both
    s2 = s2 + eta**2 * same_cluster
    scale = 1.0 - floor
    return floor**2 * float(sim.num_valid) + 2.0 * floor * scale * s1 + scale**2 * s2


# ------------------------------------------------------------- the step


def normalize_images(images_nhwc_u8, mean, std):
    """uint8 [B, H, W, 3] -> float32 NCHW ``(x / 255 - mean) / std``."""
    x = images_nhwc_u8.float() / 255.0
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    return ((x - mean) / std).permute(0, 3, 1, 2).contiguous()


def loss_terms(model: TorchFJSPH, batch: dict, bank_codes, sim: TorchSimilarity,
               stats: TorchBankStatistics, bank_active, settings, *, autocast_dtype=None):
    """Every loss term of ``fjsph_jax.methods.fjsph.step.loss_terms`` (end to end), plus u, v.

    ``settings`` is our ``StepSettings`` (weights, floor, form, image normalisation). The
    towers and heads run under autocast when ``autocast_dtype`` is given; the losses in
    float32.
    """
    device_type = batch["input_ids"].device.type
    idx = batch["index"]
    with torch.autocast(device_type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        pixels = normalize_images(batch["images"], settings.image_mean, settings.image_std)
        e_img = model.image_features(pixels)
        e_txt = model.text_features(batch["input_ids"], batch["attention_mask"])
        u = model.image_hash(e_img)
        v = model.text_hash(e_txt)
        z = model.fuse(e_img, e_txt)
    with torch.autocast(device_type, enabled=False):
        batch_codes = bank_codes[idx].float()
        s_pair = pairwise_similarity(sim, idx)
        floor = settings.similarity_floor

        def sim_loss(h_a, h_b):
            if settings.similarity_form == "likelihood":
                return similarity_likelihood(h_a, h_b, s_pair, scale=settings.likelihood_scale)
            return similarity_mse(h_a, h_b, s_pair, floor=floor)

        if settings.similarity_form != "mse":
            raise ValueError("the torch baseline implements the bank term of the mse form only")
        target_codes = apply_target_rows(sim, stats, idx, floor=floor)
        target_squares = target_row_squared_norms(sim, stats, idx, floor=floor)

        def bank_mse(h):
            return bank_similarity_mse(h, target_codes, target_squares, stats.code_gram, sim.num_valid)

        terms = {
            "contrastive": symmetric_infonce(e_img, e_txt, model.logit_scale),
            "similarity": sim_loss(u, v),
            "bank_similarity": 0.5 * (bank_mse(u) + bank_mse(v)),
            "quantization": 0.5 * (quantization_loss(u, batch_codes) + quantization_loss(v, batch_codes)),
            "balance": 0.5 * (bit_balance_loss(u) + bit_balance_loss(v)),
        }
        if z is not None:
            terms["fused"] = sim_loss(z, z) + bank_active * quantization_loss(z, batch_codes)
    return terms, u, v


def total_loss(terms: dict, bank_active, settings):
    total = (settings.contrastive_weight * terms["contrastive"]
             + settings.similarity_weight * terms["similarity"]
             + bank_active * settings.bank_similarity_weight * terms["bank_similarity"]
             + bank_active * settings.quantization_weight * terms["quantization"]
             + settings.balance_weight * terms["balance"])
    if "fused" in terms:
        total = total + settings.fused_weight * terms["fused"]
    return total


ENCODER_PREFIX = "clip."


def param_groups(model: TorchFJSPH, *, encoder_lr: float, head_lr: float, weight_decay: float):
    """AdamW groups as ``build_optimizer``: (encoder | head) x (decay if ndim >= 2 | none).

    The towers (``clip.*`` except ``clip.logit_scale``) are the encoder group, as our
    ``vision`` / ``text`` attributes; the temperature, heads and interaction are heads.
    """
    groups = {}
    for name, parameter in model.named_parameters():
        kind = "encoder" if name.startswith(ENCODER_PREFIX) and name != "clip.logit_scale" else "head"
        decay = parameter.ndim >= 2
        groups.setdefault((kind, decay), []).append(parameter)
    return [
        {"params": params, "kind": kind, "lr": encoder_lr if kind == "encoder" else head_lr,
         "weight_decay": weight_decay if decay else 0.0}
        for (kind, decay), params in sorted(groups.items())
    ]


@dataclasses.dataclass
class TorchBank:
    """The code bank on the torch side: codes B int8, outputs F, G float32 [N, K], seen [N]."""

    codes: torch.Tensor
    image_outputs: torch.Tensor
    text_outputs: torch.Tensor
    seen: torch.Tensor

    @classmethod
    def from_jax(cls, bank, device) -> "TorchBank":
        as_t = lambda a, dtype: torch.as_tensor(np.array(a), dtype=dtype, device=device)  # noqa: E731
        return cls(as_t(bank.codes, torch.int8), as_t(bank.image_outputs, torch.float32),
                   as_t(bank.text_outputs, torch.float32), as_t(bank.seen, torch.bool))

    def to_jax(self):
        from fjsph_jax.methods.fjsph.code_bank import CodeBank
        import jax.numpy as jnp

        return CodeBank(codes=jnp.asarray(self.codes.cpu().numpy()),
                        image_outputs=jnp.asarray(self.image_outputs.cpu().numpy()),
                        text_outputs=jnp.asarray(self.text_outputs.cpu().numpy()),
                        seen=jnp.asarray(self.seen.cpu().numpy()))

    def update_outputs(self, idx, u, v):
        self.image_outputs[idx] = u.detach().float()
        self.text_outputs[idx] = v.detach().float()
        self.seen[idx] = True


class TorchTrainer:
    """The FJSPH step in PyTorch: loss, backward, global-norm clip, AdamW, bank F/G update.

    ``schedules``: ``{"encoder": f, "head": f}`` with ``f(update_index) -> lr`` (our optax
    schedules evaluated on the host); None keeps the groups' fixed learning rates.
    ``compile``: ``torch.compile`` the loss computation (forward and, through AOTAutograd,
    backward). ``autocast_dtype``: e.g. ``torch.bfloat16`` on GPU (AMP), None for float32.
    """

    def __init__(self, model: TorchFJSPH, settings, *, encoder_lr: float, head_lr: float,
                 weight_decay: float, grad_clip_norm: float, schedules: dict | None = None,
                 compile: bool = False, autocast_dtype=None, fused_adamw: bool | None = None):
        self.model = model
        self.settings = settings
        self.grad_clip_norm = grad_clip_norm
        self.schedules = schedules
        self.autocast_dtype = autocast_dtype
        device = next(model.parameters()).device
        if fused_adamw is None:
            fused_adamw = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            param_groups(model, encoder_lr=encoder_lr, head_lr=head_lr, weight_decay=weight_decay),
            betas=(0.9, 0.999), eps=1e-8, fused=fused_adamw or None)
        self.parameters = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.updates = 0
        self._loss = self._loss_fn
        if compile:
            self._loss = torch.compile(self._loss_fn)

    def _loss_fn(self, batch, bank_codes, sim, stats, bank_active):
        terms, u, v = loss_terms(self.model, batch, bank_codes, sim, stats, bank_active, self.settings,
                                 autocast_dtype=self.autocast_dtype)
        return total_loss(terms, bank_active, self.settings), terms, u, v

    def step(self, batch: dict, bank: TorchBank, sim: TorchSimilarity, stats: TorchBankStatistics,
             bank_active: float) -> dict[str, torch.Tensor]:
        """One training step on ``batch`` (tensors on the model's device); writes u, v into
        the bank's F, G rows. Returns the loss terms and the gradient norm (not synced)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, terms, u, v = self._loss(batch, bank.codes, sim, stats, bank_active)
        loss.backward()
        norm = self.apply_gradients()
        bank.update_outputs(batch["index"], u, v)
        return {"loss": loss.detach(), **{k: t.detach() for k, t in terms.items()}, "grad_norm": norm.detach()}

    def apply_gradients(self) -> torch.Tensor:
        """Learning rates from the schedules, global-norm clipping as
        ``optax.clip_by_global_norm`` (g * max / ||g|| when ||g|| >= max), AdamW; returns ||g||."""
        if self.schedules is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = float(self.schedules[group["kind"]](self.updates))
        grads = [p.grad for p in self.parameters if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        factor = torch.where(norm < self.grad_clip_norm, torch.ones_like(norm), self.grad_clip_norm / norm)
        torch._foreach_mul_(grads, factor)
        self.optimizer.step()
        self.updates += 1
        return norm


def encode(model: TorchFJSPH, batch: dict, settings, *, autocast_dtype=None):
    """(image codes, text codes) int8 [B, K] in {-1, +1} (sign with 0 -> +1), no masking."""
    with torch.no_grad(), torch.autocast(batch["input_ids"].device.type, dtype=autocast_dtype or torch.bfloat16,
                                         enabled=autocast_dtype is not None):
        pixels = normalize_images(batch["images"], settings.image_mean, settings.image_std)
        u = model.image_hash(model.image_features(pixels))
        v = model.text_hash(model.text_features(batch["input_ids"], batch["attention_mask"]))
    sign = lambda h: torch.where(h >= 0, 1, -1).to(torch.int8)  # noqa: E731
    return sign(u), sign(v)


def to_torch_batch(batch: dict[str, Any], device) -> dict[str, torch.Tensor]:
    """A numpy batch of our loader (images uint8, ids, mask, index) as torch tensors."""
    out = {}
    for key, value in batch.items():
        array = np.asarray(value)
        if key in ("input_ids", "attention_mask", "index"):
            array = array.astype(np.int64)
        out[key] = torch.as_tensor(array, device=device)
    return out
