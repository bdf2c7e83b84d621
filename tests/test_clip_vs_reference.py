"""Numerical parity of imported CLIP towers with transformers.CLIPModel (torch, CPU, float32).

Random tiny CLIPModels are saved with save_pretrained, loaded with
fjsph_jax.weights.load_pretrained and compared on image embeddings, text embeddings
(padded batches of different lengths, tokenised by the checkpoint's own tokenizer) and
logits: max abs difference <= 1e-4. FLIP masking on an imported ViT is compared with
transformers' encoder run on the same kept patches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fjsph_jax.models.vit import num_kept_patches, random_patch_mask  # noqa: E402
from fjsph_jax.weights import load_pretrained  # noqa: E402
from fjsph_jax.weights.testing import save_tiny_hf_clip  # noqa: E402

TOLERANCE = 1e-4
TEXTS = [
    "the cat",
    "a dog!!",
    "",
    "the cat and the dog and the cat and the dog and more",  # longer than every context: truncated
]

# name -> (vision config, text config, projection_dim). Between them: image sizes that are
# not multiples of the patch (36/8, 30/7 floor to 4x4), 2/3/4 heads, every hidden_act we
# map, legacy (argmax) and current (first eos) text pooling, projection dims != widths,
# and a non-default LayerNorm eps.
CONFIGS = {
    "floor36_gelu_eos": (
        dict(
            image_size=36,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            hidden_act="gelu",
        ),
        dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=12,
            hidden_act="gelu",
        ),
        24,
    ),
    "floor30_quickgelu_argmax": (
        dict(
            image_size=30,
            patch_size=7,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            hidden_act="quick_gelu",
        ),
        dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=10,
            hidden_act="quick_gelu",
            eos_token_id=2,
        ),
        40,
    ),
    "tanh_gelu_eps": (
        dict(
            image_size=48,
            patch_size=16,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=3,
            hidden_act="gelu_new",
            layer_norm_eps=1e-6,
        ),
        dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        ),
        64,
    ),
}


def _hf_outputs(hf, input_ids, attention_mask, pixels_nhwc):
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(input_ids, dtype=torch.long),
            attention_mask=torch.tensor(attention_mask, dtype=torch.long),
            pixel_values=torch.tensor(pixels_nhwc.transpose(0, 3, 1, 2)),
        )
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def imported(request, tmp_path_factory):
    """(name, transformers model, our CLIPEncoder, tokenizer) for one tiny config."""
    vision, text, projection_dim = CONFIGS[request.param]
    directory = str(tmp_path_factory.mktemp(request.param))
    hf = save_tiny_hf_clip(
        directory, vision=vision, text=text, projection_dim=projection_dim, seed=3
    )
    model, tokenizer = load_pretrained(directory)
    return request.param, hf, model, tokenizer


def test_embeddings_and_logits_match_transformers(imported):
    name, hf, model, tokenizer = imported
    context = model.text.config.context_length
    input_ids, attention_mask = tokenizer.encode(TEXTS, context)
    assert len({int(m.sum()) for m in attention_mask}) == len(TEXTS)  # really different lengths
    size = model.vision.config.image_size
    pixels = np.random.RandomState(1).randn(3, size, size, 3).astype(np.float32)
    want_image, want_text, want_logits = _hf_outputs(hf, input_ids, attention_mask, pixels)

    image = np.asarray(model.encode_image(jnp.asarray(pixels)))
    text = np.asarray(model.encode_text(jnp.asarray(input_ids), jnp.asarray(attention_mask)))
    logits = np.asarray(
        model.logits(jnp.asarray(pixels), jnp.asarray(input_ids), jnp.asarray(attention_mask))
    )
    diffs = {
        "image": np.abs(image - want_image).max(),
        "text": np.abs(text - want_text).max(),
        "logits": np.abs(logits - want_logits).max(),
    }
    print(f"{name}: max abs diff {diffs}")
    assert (
        image.shape == want_image.shape
        and text.shape == want_text.shape
        and logits.shape == (3, len(TEXTS))
    )
    assert all(d <= TOLERANCE for d in diffs.values()), diffs
    np.testing.assert_allclose(np.linalg.norm(image, axis=-1), 1.0, atol=1e-5)
    # The four texts give four different embeddings (pooling is not stuck on one position).
    assert np.abs(text[:, None] - text[None]).sum(-1)[np.triu_indices(len(TEXTS), 1)].min() > 1e-3


@pytest.mark.parametrize("imported", ["floor36_gelu_eos"], indirect=True)
def test_flip_masking_on_imported_vit_keeps_only_sampled_patches(imported):
    _, hf, model, _ = imported
    config = model.vision.config
    pixels = (
        np.random.RandomState(2)
        .randn(2, config.image_size, config.image_size, 3)
        .astype(np.float32)
    )
    key = jax.random.PRNGKey(7)
    keep = num_kept_patches(config.num_patches, 0.5)
    _, ids_keep = random_patch_mask(jnp.zeros((2, config.num_patches, 1)), keep, key)
    ids_keep = torch.tensor(np.asarray(ids_keep), dtype=torch.long)

    vm = hf.vision_model
    with torch.no_grad():
        tokens = vm.embeddings(
            torch.tensor(pixels.transpose(0, 3, 1, 2))
        )  # [B, 1 + N, D], positions added
        patches = torch.gather(
            tokens[:, 1:], 1, ids_keep[:, :, None].expand(-1, -1, tokens.shape[-1])
        )
        hidden = vm.encoder(
            inputs_embeds=vm.pre_layrnorm(torch.cat([tokens[:, :1], patches], 1))
        ).last_hidden_state
        want = hf.visual_projection(vm.post_layernorm(hidden[:, 0]))
        want = (want / want.norm(dim=-1, keepdim=True)).numpy()

    masked = np.asarray(model.encode_image(jnp.asarray(pixels), mask_ratio=0.5, mask_key=key))
    unmasked = np.asarray(model.encode_image(jnp.asarray(pixels)))
    print(f"masked max abs diff {np.abs(masked - want).max()}")
    assert keep == 8
    assert np.abs(masked - want).max() <= TOLERANCE
    assert np.abs(masked - unmasked).max() > 1e-3
