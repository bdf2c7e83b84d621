"""Bad configuration fails before any work, naming the key and the allowed values."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
import default  # noqa: E402

from fjsph_jax.configuration import apply_overrides  # noqa: E402

from fjsph_jax.configuration import ConfigError, validate_config  # noqa: E402


def _config(**overrides):
    return apply_overrides(default.get_config(), **overrides)


def test_default_config_is_valid():
    validate_config(_config(), num_devices=8)


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("data.name", "imagenet", r"config\.data\.name='imagenet'.*'synthetic', 'mirflickr'"),
        ("model.vision", "vit_huge", r"config\.model\.vision='vit_huge'.*'vit_tiny'"),
        ("model.text", "gpt", r"config\.model\.text='gpt'.*'text_tiny'"),
        ("model.interaction", "cross", r"config\.model\.interaction.*'none', 'transformer'"),
        ("train.mode", "finetune", r"config\.train\.mode.*'end_to_end', 'frozen_encoder'"),
        ("loss.similarity_form", "hinge", r"config\.loss\.similarity_form.*'mse', 'likelihood'"),
        ("bits", 0, r"config\.bits=0 must be a positive integer"),
        ("codes.updates_per_epoch", 0, r"config\.codes\.updates_per_epoch=0 must be a positive"),
        ("data.loader", "disk", r"config\.data\.loader='disk'.*'memory', 'stream'"),
        ("data.loader", "stream", r"config\.data\.loader='stream' reads a built dataset"),
        ("data.read_threads", 0, r"config\.data\.read_threads=0 must be a positive integer"),
        ("bits", -16, r"config\.bits=-16"),
        ("model.mask_ratio", 1.0, r"config\.model\.mask_ratio=1\.0 must lie in \[0\.0, 1\.0\)"),
        ("model.mask_ratio", -0.1, r"config\.model\.mask_ratio"),
        ("loss.eta", 1.5, r"config\.loss\.eta=1\.5 must lie in \[0\.0, 1\.0\]"),
        (
            "train.global_batch_size",
            100,
            r"global_batch_size=100 must be a positive multiple of the device count \(8\)",
        ),
        (
            "loss.cluster_ks",
            (8, 50000),
            r"cluster_ks\[1\]=50000 is larger than the number of training items.*1\.\.20000",
        ),
        (
            "loss.cluster_weights",
            (0.5, 0.5),
            r"cluster_weights has 2 entries but config\.loss\.cluster_ks has 3",
        ),
        (
            "data.num_train",
            21500,
            r"num_query \+ config\.data\.num_train = 22500 exceeds config\.data\.num_items=22000",
        ),
        ("model.dtype", "float16", r"config\.model\.dtype='float16'.*'float32', 'bfloat16'"),
        ("method", "dsph", r"config\.method='dsph'.*'fjsph', 'jspsh', 'jdsh'"),
        ("data.features", "feats.csv", r"config\.data\.features='feats\.csv' is neither"),
        ("data.features", "/nowhere/f.mat", r"config\.data\.features='/nowhere/f\.mat': no such file"),
        ("data.features", "handcrafted", r"config\.train\.mode='end_to_end' trains the towers"),
        ("eval.map_convention", "dchmt", r"config\.eval\.map_convention='dchmt'.*'top_k', 'dcmh'"),
        ("eval.split", "val", r"config\.eval\.split='val'.*'test', 'validation'"),
        ("init.from_scratch", False, r"config\.init\.checkpoint is empty.*from_scratch=True"),
        ("codes.quantization_weight", -1.0, r"config\.codes\.quantization_weight=-1\.0 must be"),
    ],
)
def test_bad_values_name_the_key(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config(_config(**{key: value}), num_devices=8)


def test_batch_rule_depends_on_device_count():
    validate_config(_config(**{"train.global_batch_size": 100}), num_devices=4)


def test_validation_split_needs_a_validation_size():
    config = _config(**{"eval.split": "validation", "data.num_validation": 0})
    with pytest.raises(ConfigError, match=r"config\.data\.num_validation=0 must be a positive"):
        validate_config(config, num_devices=8)
    validate_config(_config(**{"eval.split": "validation"}), num_devices=8)


def test_frozen_fjsph_reads_feature_files(tmp_path):
    path = tmp_path / "f.npz"
    path.write_bytes(b"")
    config = _config(**{"train.mode": "frozen_encoder", "data.features": str(path),
                        "init.from_scratch": False})
    validate_config(config, num_devices=8)  # no towers needed: no checkpoint needed
