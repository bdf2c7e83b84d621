"""Tests for fjsph_jax.models.registry presets and lookups."""
import jax
import numpy as np
import pytest
from flax import nnx

from fjsph_jax.models import registry
from fjsph_jax.models.text import TextConfig
from fjsph_jax.models.vit import ViTConfig, VisionTransformer


def test_vision_presets():
    tiny = registry.vision_config("vit_tiny")
    assert tiny == ViTConfig(32, 4, 96, 3, 3, 384, 64, act="gelu", pool="cls", eps=1e-5)
    b16 = registry.vision_config("vit_b16")
    assert (b16.image_size, b16.patch_size, b16.width, b16.layers, b16.heads, b16.mlp_dim, b16.output_dim) == (
        224, 16, 768, 12, 12, 3072, 512)
    assert b16.act == "quick_gelu" and registry.vision_config("vit_b32").patch_size == 32
    l14 = registry.vision_config("vit_l14")
    assert (l14.patch_size, l14.width, l14.layers, l14.heads, l14.output_dim) == (14, 1024, 24, 16, 768)


def test_text_presets():
    tiny = registry.text_config("text_tiny")
    assert tiny == TextConfig(512, 24, 64, 2, 2, 256, 64, act="gelu", causal=True, pool="last")
    base = registry.text_config("text_base")
    assert (base.vocab_size, base.context_length, base.width, base.layers, base.heads, base.mlp_dim,
            base.output_dim, base.causal) == (49408, 77, 512, 12, 8, 2048, 512, True)
    bert = registry.text_config("bert_base")
    assert (bert.vocab_size, bert.context_length, bert.width, bert.layers, bert.heads, bert.mlp_dim) == (
        30522, 32, 768, 12, 12, 3072)
    assert not bert.causal and bert.pool == "first" and bert.act == "gelu"


def test_overrides_replace_fields():
    config = registry.vision_config("vit_tiny", image_size=64, output_dim=32)
    assert config.image_size == 64 and config.output_dim == 32 and config.width == 96
    assert registry.vision_config("vit_tiny").image_size == 32  # presets are not mutated
    assert registry.text_config("text_tiny", vocab_size=1000).vocab_size == 1000


def test_unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'vit_b16'.*'vit_b32'.*'vit_l14'.*'vit_tiny'"):
        registry.vision_config("vit_huge")
    with pytest.raises(ValueError, match=r"'bert_base'.*'text_base'.*'text_tiny'"):
        registry.text_config("gpt2")


def test_unknown_override_keys_raise():
    with pytest.raises(ValueError, match="dim_width.*allowed keys"):
        registry.vision_config("vit_tiny", dim_width=3)
    with pytest.raises(ValueError, match="contxt"):
        registry.text_config("text_tiny", contxt=3)


def test_clip_b32_preset_has_clip_parameter_count():
    """Abstract init (no compute): CLIP ViT-B/32 visual tower incl. projection has 87,849,216 params."""
    model = nnx.eval_shape(lambda: VisionTransformer(registry.vision_config("vit_b32"), rngs=nnx.Rngs(0)))
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == 87_849_216


@pytest.mark.parametrize("name", ["vit_b32", "vit_b16"])
def test_presets_default_to_plain_compute_and_take_compute_options(name):
    """Every preset computes as before by default; the compute options are overrides that
    leave the parameters (names and shapes) alone."""
    base = registry.vision_config(name)
    assert (base.attention, base.remat, base.scan_layers) == ("xla", "none", False)
    tuned = registry.vision_config(name, attention="dot_product_attention", remat="dots", scan_layers=True)
    shapes = []
    for config in (base, tuned):
        model = nnx.eval_shape(lambda c=config: VisionTransformer(c, rngs=nnx.Rngs(0)))
        shapes.append({str(path): v.shape for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))})
    assert shapes[0] == shapes[1]
    text = registry.text_config("text_base", scan_layers=True)
    assert text.scan_layers and text.layers == 12
