"""JSPSH (TCSVT 2024) on MIRFlickr-25K features from our encoders, the authors' settings.

The authors' protocol (their load_data.m / main_demo.m): 2,000 random queries, every other
item is the training set and the retrieval database; hyper-parameters as configs/jspsh.py
(mu 3, alpha 1, omega 10, beta 0.01, theta 10, lambda 1e-3, 5 rounds, sparsity 0.05,
k-means sizes 100 / 200 / 500, 1,000 anchors). JSPSH hashes feature vectors, so write a
feature file with the towers first (20,015 cleaned pairs: 2,000 queries + 18,015 training
rows, the whole database), then train on it:

    python launch/encode.py --features=mir_features.npz --config=configs/mirflickr.py \
        --config.init.checkpoint=PATH --config.data.manual_dir=DIR \
        --config.data.num_query=2000 --config.data.num_train=18015
    python launch/train.py --config=configs/jspsh_mirflickr.py \
        --config.data.features=mir_features.npz --config.bits=64

(``launch/encode.py --handcrafted`` writes colour histograms + bag of words instead, no
checkpoint needed.) The file's tr rows are the database, its train_rows (all of tr by
default) the training set, te the queries. The solve holds a few [n, 20 bits] float32
arrays: about 0.5 GB at n = 18,015 and 64 bits.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jspsh  # noqa: E402  (configs/jspsh.py: the authors' hyper-parameters)


def get_config():
    config = jspsh.get_config()
    config.bits = 64
    config.data.name = "mirflickr"
    config.data.num_query = 2000
    config.data.num_train = 18015
    config.data.features = ""  # required: a .mat / .npz written by launch/encode.py
    config.jspsh.anchors = 1000  # train_JSPSH.m: sel_num = 1000
    return config
