"""FJSPH on MS-COCO 2014 (80 categories, images with >= 1 category): 5,000 query / rest / 10,000 train.

Same model and training settings as configs/mirflickr.py (ViT-B/16 + 12-layer text
tower, 16/32/64 bits by `--config.bits`); only the dataset keys differ. Needs the
dataset on disk: see docs/datasets.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mirflickr  # noqa: E402


def get_config():
    config = mirflickr.get_config()
    config.data.name = "coco"
    config.data.num_query = 5000
    config.data.num_train = 10000
    config.loss.cluster_ks = (40, 80, 160)
    return config
