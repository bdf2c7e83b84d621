"""JSPSH on MS-COCO features from our encoders (not in the paper: its MIRFlickr settings).

The authors report MIRFlickr, NUS-WIDE and IAPR TC-12, not COCO; this config keeps their
MIRFlickr hyper-parameters (configs/jspsh.py, 1,000 anchors) with configs/coco.py's 5,000
queries. Write the feature file with the towers, then train:

    python launch/encode.py --features=coco_features.npz --config=configs/coco.py \
        --config.init.checkpoint=PATH --config.data.manual_dir=DIR \
        --config.data.num_query=5000 --config.data.num_train=10000
    python launch/train.py --config=configs/jspsh_coco.py \
        --config.data.features=coco_features.npz --config.bits=64

The file's train_rows (here 10,000 of the database) are the training set; the other
database rows are coded by the hash functions, like the queries.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jspsh_mirflickr  # noqa: E402


def get_config():
    config = jspsh_mirflickr.get_config()
    config.data.name = "coco"
    config.data.num_query = 5000
    config.data.num_train = 10000
    return config
