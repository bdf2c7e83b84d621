"""JSPSH (TCSVT 2024) on NUS-WIDE features from our encoders, the authors' settings.

As configs/jspsh_mirflickr.py (the authors' protocol: 2,000 random queries, the rest the
training set and database) with 5,000 anchors, as their train_JSPSH.m uses for NUS-WIDE
(``sel_num = 5000``). Write the feature file with the towers, then train:

    python launch/encode.py --features=nus_features.npz --config=configs/nuswide.py \
        --config.init.checkpoint=PATH --config.data.manual_dir=DIR \
        --config.data.num_query=2000 --config.data.num_train=N_MINUS_2000
    python launch/train.py --config=configs/jspsh_nuswide.py \
        --config.data.features=nus_features.npz --config.bits=64

with N_MINUS_2000 the dataset's item count less the queries (the encode run names N when
the split does not fit). A smaller --config.data.num_train trains on a random subset of the
database (the file's train_rows; the other database rows are coded by the hash
functions). Memory: a few [n, 20 bits] float32 arrays, about 1 GB each at n = 190,000 and
64 bits.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jspsh_mirflickr  # noqa: E402


def get_config():
    config = jspsh_mirflickr.get_config()
    config.data.name = "nuswide"
    config.data.num_query = 2000
    config.data.num_train = 10500  # the encode run's --config.data.num_train decides
    config.jspsh.anchors = 5000  # train_JSPSH.m: sel_num = 5000 for NUS-WIDE
    return config
