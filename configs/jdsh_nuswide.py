"""JDSH (SIGIR 2020) on NUS-WIDE TC-10, with the authors' constants (config/JDSH_NUSWIDE.json).

As configs/jdsh_mirflickr.py (see it for the commands), with their NUS-WIDE split: 200
queries and 500 training items drawn from each of the 10 labels (2,000 / 5,000, no
top-up), the database every non-query item.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jdsh_mirflickr  # noqa: E402


def get_config():
    config = jdsh_mirflickr.get_config()
    config.data.name = "nuswide"
    config.data.num_query = 2000
    config.data.num_train = 5000
    config.jdsh = jdsh_mirflickr.jdsh_section(
        image_weight=0.4,  # [alpha]
        text_weight=0.3,  # [beta]
        high_order_weight=0.3,  # [lamb]
        scale=1.4,  # [mu]
        intra_weight=0.1,  # [INTRA]
        left_loc=-0.62,  # [LOC_LEFT]
        left_scale=0.0128,  # [SCALE_LEFT]
        left_width=2.0,  # [ALPHA]
        right_loc=-0.62,  # [LOC_RIGHT]
        right_scale=0.086,  # [SCALE_RIGHT]
        right_width=4.0,  # [BETA]
        min_value=-0.64,  # [MIN]
        max_value=0.75,  # [MAX]
        left_gain=0.2,  # [L1]
        right_gain=0.2,  # [L2]
    )
    return config
