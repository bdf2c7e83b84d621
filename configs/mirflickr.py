"""FJSPH on MIRFlickr-25K (20,015 cleaned pairs, 24 labels): 2,000 query / rest database / 10,000 train.

Real model sizes: a FLIP/CLIP ViT-B/16 image tower and a 12-layer text tower. Choose
the code length with `--config.bits=16|32|64` and point at a pretrained checkpoint
with `--config.init.checkpoint=PATH`. Needs the dataset on disk: see docs/datasets.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402  (configs/default.py: every key and its meaning)


def get_config():
    config = default.get_config()
    config.data.name = "mirflickr"
    config.data.num_query = 2000
    config.data.num_train = 10000
    config.data.image_size = 224
    config.data.loader = "stream"  # decode JPEGs per batch (grain); "memory" holds ~3 GB
    config.data.context_length = 77
    config.data.image_mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP
    config.data.image_std = (0.26862954, 0.26130258, 0.27577711)
    config.init.from_scratch = False  # ViT-B/16 from random init needs opting in
    config.model.vision = "vit_b16"
    config.model.text = "text_base"
    config.model.feature_dim = 512
    config.model.hash_hidden_dim = 1024
    config.model.mask_ratio = 0.5
    config.model.dtype = "bfloat16"
    config.train.global_batch_size = 128
    config.train.num_epochs = 30
    config.train.learning_rate = 1e-3
    config.train.encoder_learning_rate = 1e-5
    config.train.checkpoint_every_steps = 500
    config.train.log_every_steps = 50
    config.loss.cluster_ks = (12, 24, 48)
    config.eval.batch_size = 256
    config.eval.top_k = 5000
    return config
