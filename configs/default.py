"""Embedded demo: FJSPH end to end on the procedurally generated synthetic scenes.

`python launch/train.py` uses this file when no `--config` is given. It trains a
tiny FLIP-style ViT and text transformer from scratch on 32x32 multi-object scenes,
fast on a 2-core CPU. Every number the code uses lives here or in configs/common.py
(data, evaluation); override any of them with `--config.a.b=value`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (configs/common.py: the keys every method shares)
import ml_collections  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
    config = common.get_config()  # seed, bits, data, eval: shared by every method
    config.method = "fjsph"

    # ---- model ------------------------------------------------------------
    config.model = ml_collections.ConfigDict()
    config.model.vision = "vit_tiny"  # preset in fjsph_jax.models.registry
    config.model.text = "text_tiny"
    config.model.feature_dim = 64  # encoder projection dim (contrastive space)
    config.model.hash_hidden_dim = 256
    config.model.interaction = "transformer"  # none | transformer
    config.model.interaction_layers = 1
    config.model.interaction_heads = 2
    config.model.mask_ratio = 0.25  # FLIP patch masking during training
    config.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    # Compute options of the towers: the same function and parameters, computed differently
    # (fjsph_jax/models/layers.py; docs/benchmarks.md has their speed).
    config.model.attention = "xla"  # xla | dot_product_attention | cudnn (NVIDIA GPU, bf16)
    config.model.remat = "none"  # none | full | dots: recompute activations in the backward
    config.model.scan_layers = False  # one lax.scan over each tower's blocks (faster compiles)

    # ---- initialisation (pretrained towers) -------------------------------
    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = ""  # path to a pretrained CLIP/FLIP checkpoint
    # The demo trains its tiny towers from random initialisation on purpose; the dataset
    # configs need a checkpoint unless this is set.
    config.init.from_scratch = True

    # ---- training ---------------------------------------------------------
    config.train = ml_collections.ConfigDict()
    config.train.mode = "end_to_end"  # end_to_end | frozen_encoder
    config.train.global_batch_size = 128
    config.train.num_epochs = 6
    config.train.learning_rate = 2e-3
    config.train.encoder_learning_rate = 1e-3  # used for the towers in end_to_end mode
    config.train.warmup_steps = 100
    config.train.weight_decay = 0.05
    config.train.grad_clip_norm = 1.0
    config.train.log_every_steps = 20
    config.train.checkpoint_every_steps = 200
    config.train.max_checkpoints_to_keep = 2
    config.train.max_steps = -1  # -1: num_epochs * steps_per_epoch
    # Devices per parameter shard: > 1 makes the mesh ('data', 'fsdp') and splits parameters
    # and optimiser state over 'fsdp' instead of replicating them (fjsph_jax/parallel.py).
    config.train.fsdp = 1

    # ---- objective --------------------------------------------------------
    config.loss = ml_collections.ConfigDict()
    config.loss.similarity_form = "mse"  # mse | likelihood
    # Target code similarity of unrelated pairs (S = 0): T = floor + (1 - floor) S.
    # -1: opposite codes (T = 2S - 1); 0: orthogonal codes (Hamming distance K/2).
    config.loss.similarity_floor = 0.0
    config.loss.likelihood_scale = 8.0
    config.loss.contrastive_weight = 0.01
    config.loss.similarity_weight = 2.0  # in-batch image-text term
    config.loss.bank_similarity_weight = 2.0  # image-bank and text-bank terms
    config.loss.quantization_weight = 1.0
    config.loss.balance_weight = 0.1
    config.loss.fused_weight = 0.5  # weight of the fusion-head terms
    config.loss.eta = 0.3  # S = (1 - eta) S_sample + eta S_cluster
    config.loss.cluster_ks = (24, 48, 96)  # k-means granularities over labels
    config.loss.cluster_weights = ()  # empty: uniform
    config.loss.kmeans_iters = 50

    # ---- discrete code bank ----------------------------------------------
    config.codes = ml_collections.ConfigDict()
    config.codes.update_every_steps = -1  # -1: steps_per_epoch // updates_per_epoch
    config.codes.updates_per_epoch = 2
    # alpha / (n K) ||K T - B F^T||^2 + gamma ||B - F||^2 (both O(K) per row). Chosen on
    # the demo's validation queries (32 bits, MAP@all i2t / t2i): alpha 3: 0.543 / 0.534,
    # 30: 0.813 / 0.811, 300: 0.881 / 0.877, 1e5: 0.881 / 0.877 (the similarity term
    # decides; 300 is the smallest value on the plateau).
    config.codes.similarity_weight = 300.0  # alpha in the DCC objective
    config.codes.quantization_weight = 1.0  # gamma
    config.codes.num_sweeps = 2

    return config
