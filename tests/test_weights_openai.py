"""Tests for fjsph_jax.weights.openai_clip: OpenAI / OpenCLIP state dicts written by torch.

Tiny transformers CLIPModels are re-keyed into OpenAI's layout here (fused in_proj, c_fc,
[in, out] projections), written with torch.save / safetensors / TorchScript, loaded back
and compared with the transformers model they came from.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from fjsph_jax.models.vit import ViTConfig
from fjsph_jax.weights import (
    CheckpointFormatError,
    CheckpointKeysError,
    UnsupportedCheckpointError,
    load_pretrained,
    load_towers,
)

torch = pytest.importorskip("torch")
from fjsph_jax.weights.testing import save_tiny_hf_clip, write_tiny_clip_tokenizer  # noqa: E402

TEXTS = ["the cat", "a dog and the cat", "dog"]


def openai_state_dict(hf) -> dict:
    """The OpenAI CLIP key layout of a transformers CLIPModel's weights (torch tensors)."""
    sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    out = {}

    def blocks(ours_prefix, hf_prefix, layers):
        for i in range(layers):
            o, h = f"{ours_prefix}transformer.resblocks.{i}", f"{hf_prefix}.encoder.layers.{i}"
            out[f"{o}.attn.in_proj_weight"] = torch.cat(
                [sd[f"{h}.self_attn.{p}_proj.weight"] for p in "qkv"]
            )
            out[f"{o}.attn.in_proj_bias"] = torch.cat(
                [sd[f"{h}.self_attn.{p}_proj.bias"] for p in "qkv"]
            )
            for mine, theirs in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                out[f"{o}.{mine}.weight"] = sd[f"{h}.{theirs}.weight"]
                out[f"{o}.{mine}.bias"] = sd[f"{h}.{theirs}.bias"]

    v = "vision_model"
    out["visual.conv1.weight"] = sd[f"{v}.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[f"{v}.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
    for mine, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out[f"visual.{mine}.weight"] = sd[f"{v}.{theirs}.weight"]
        out[f"visual.{mine}.bias"] = sd[f"{v}.{theirs}.bias"]
    blocks("visual.", v, hf.config.vision_config.num_hidden_layers)
    out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    blocks("", "text_model", hf.config.text_config.num_hidden_layers)
    out["ln_final.weight"] = sd["text_model.final_layer_norm.weight"]
    out["ln_final.bias"] = sd["text_model.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return out


def _parity(model, tokenizer, hf):
    ids, mask = tokenizer.encode(TEXTS, model.text.config.context_length)
    size = hf.config.vision_config.image_size  # may exceed grid * patch: both models floor
    pixels = np.random.RandomState(0).randn(2, size, size, 3).astype(np.float32)
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)),
        )
    diff = max(
        np.abs(
            np.asarray(model.encode_image(jnp.asarray(pixels))) - out.image_embeds.numpy()
        ).max(),
        np.abs(
            np.asarray(model.encode_text(jnp.asarray(ids), jnp.asarray(mask)))
            - out.text_embeds.numpy()
        ).max(),
        np.abs(
            np.asarray(model.logits(jnp.asarray(pixels), jnp.asarray(ids), jnp.asarray(mask)))
            - out.logits_per_image.numpy()
        ).max(),
    )
    assert diff <= 1e-4, diff
    return diff


@pytest.fixture(scope="module")
def openai_style(tmp_path_factory):
    """An OpenAI-convention model (QuickGELU, head width 64, legacy argmax pooling)."""
    hf = save_tiny_hf_clip(
        str(tmp_path_factory.mktemp("hf_openai")),
        vision=dict(
            image_size=28,
            patch_size=8,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=1,
            hidden_act="quick_gelu",
        ),
        text=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=1,
            num_attention_heads=1,
            max_position_embeddings=9,
            hidden_act="quick_gelu",
            eos_token_id=2,
        ),
        projection_dim=20,
        with_tokenizer=False,
    )
    return hf, openai_state_dict(hf)


def test_torch_save_round_trip_matches_transformers(openai_style, tmp_path):
    hf, state = openai_style
    path = str(tmp_path / "ViT-tiny.pt")
    torch.save(state, path)
    write_tiny_clip_tokenizer(str(tmp_path))
    model, tokenizer = load_pretrained(path)
    assert model.vision.config == ViTConfig(
        24, 8, 64, 2, 1, 96, 20, act="quick_gelu", pool="cls", eps=1e-5
    )
    assert (model.text.config.pool, model.text.config.causal, model.text.config.heads) == (
        "argmax",
        True,
        1,
    )
    print(f"openai .pt max abs diff {_parity(model, tokenizer, hf)}")


def test_open_clip_safetensors_with_sidecar_config_matches_transformers(tmp_path):
    hf = save_tiny_hf_clip(
        str(tmp_path / "hf"),
        vision=dict(
            image_size=32,
            patch_size=16,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            hidden_act="gelu",
        ),
        text=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=8,
            hidden_act="gelu",
            eos_token_id=2,
        ),
        projection_dim=16,
        seed=5,
    )
    directory = tmp_path / "open_clip"
    write_tiny_clip_tokenizer(str(directory))
    save_file(
        {k: v.numpy() for k, v in openai_state_dict(hf).items()},
        str(directory / "open_clip_model.safetensors"),
    )
    sidecar = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"head_width": 16, "width": 32},
            "text_cfg": {"heads": 4, "width": 48},
        }
    }
    (directory / "open_clip_config.json").write_text(json.dumps(sidecar))
    model, tokenizer = load_pretrained(
        str(directory)
    )  # the directory: its one state-dict file is found
    assert (model.vision.config.act, model.vision.config.heads, model.text.config.heads) == (
        "gelu",
        2,
        4,
    )
    print(f"open_clip safetensors max abs diff {_parity(model, tokenizer, hf)}")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_nested_prefixed_and_torchscript_fp16_files_give_the_same_weights(openai_style, tmp_path):
    _, state = openai_style
    nested = str(tmp_path / "epoch_3.pt")
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, nested)
    towers = load_towers(nested)
    np.testing.assert_array_equal(
        towers.vision_params["transformer.blocks.1.attn.k_proj.kernel"],
        state["visual.transformer.resblocks.1.attn.in_proj_weight"][64:128].numpy().T,
    )

    # OpenAI's released .pt files are TorchScript archives of a float16 model.
    root = torch.nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(value.half(), requires_grad=False))
    scripted = str(tmp_path / "jit.pt")
    torch.jit.script(_Holder(root)).save(scripted)
    from_jit = load_towers(scripted)
    assert from_jit.vision == towers.vision and from_jit.text == towers.text
    for key, value in towers.text_params.items():
        np.testing.assert_array_equal(
            from_jit.text_params[key], value.astype(np.float16).astype(np.float32)
        )
    assert from_jit.text_params["proj.kernel"].dtype == np.float32


class _Holder(torch.nn.Module):
    """Adopts another module's children and parameters; scriptable (has a forward)."""

    def __init__(self, inner):
        super().__init__()
        for name, child in inner.named_children():
            self.add_module(name, child)
        for name, parameter in inner.named_parameters(recurse=False):
            self.register_parameter(name, parameter)

    def forward(self, x):
        return x


def _save(state, path):
    save_file({k: v.numpy() for k, v in state.items()}, str(path))
    return str(path)


def test_missing_and_unexpected_keys_are_listed(openai_style, tmp_path):
    _, state = openai_style
    gone = ("visual.ln_post.weight", "transformer.resblocks.0.mlp.c_fc.weight")
    broken = {k: v for k, v in state.items() if k not in gone}
    broken["visual.attnpool.k_proj.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointKeysError) as error:
        load_towers(_save(broken, tmp_path / "broken.safetensors"))
    assert error.value.missing == sorted(gone)
    assert error.value.unexpected == ["visual.attnpool.k_proj.weight"]


def test_unsupported_layouts_raise_clear_errors(openai_style, tmp_path):
    _, state = openai_style
    resnet = dict(state, **{"visual.layer1.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(UnsupportedCheckpointError, match="ResNet"):
        load_towers(_save(resnet, tmp_path / "rn50.safetensors"))
    hf_named = {"vision_model.embeddings.class_embedding": torch.zeros(4)}
    with pytest.raises(CheckpointFormatError, match="config.json"):
        load_towers(_save(hf_named, tmp_path / "model.safetensors"))
    narrow = {k: v for k, v in state.items()}
    narrow["token_embedding.weight"] = torch.zeros(520, 48)  # width 48: heads = 48 // 64 cannot be
    with pytest.raises(UnsupportedCheckpointError, match="open_clip_config.json"):
        load_towers(_save(narrow, tmp_path / "narrow.safetensors"))
    directory = tmp_path / "no_ln_pre"
    directory.mkdir()
    (directory / "open_clip_config.json").write_text(
        json.dumps({"vision_cfg": {"no_ln_pre": True}})
    )
    with pytest.raises(UnsupportedCheckpointError, match="vision_cfg.no_ln_pre=True"):
        load_towers(_save(state, directory / "model.safetensors"))
