"""FJSPH on NUS-WIDE (21 most frequent concepts): 2,100 query / rest database / 10,500 train.

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
    config.data.name = "nuswide"
    config.data.num_query = 2100
    config.data.num_train = 10500
    config.loss.cluster_ks = (11, 21, 42)
    return config
