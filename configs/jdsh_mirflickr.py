"""JDSH (SIGIR 2020) on MIRFlickr-25K, with the authors' constants (config/JDSH_MIRFlickr.json).

Unsupervised: the target of each batch is the joint-modal similarity of its image and
text features, reweighted by DSDW (fjsph_jax/methods/jdsh, docs/jdsh.md). Their split
(the DJSRH protocol, ``split_protocol = "djsrh"``): 2,000 queries and 5,000 training items
drawn per label (160 + 400 from the first label, 80 + 200 from each other one, training
topped up to 5,000), the database every non-query item; MAP@50 as their
``calculate_top_map``. JDSH hashes feature vectors, so give them:

    # image features from our towers (text: the bag-of-words tags, see docs/jdsh.md)
    python launch/encode.py --features=mir_djsrh.npz --config=configs/mirflickr.py \
        --config.init.checkpoint=PATH --config.data.manual_dir=DIR \
        --config.data.split_protocol=djsrh --config.data.num_train=5000
    python launch/train.py --config=configs/jdsh_mirflickr.py \
        --config.data.features=mir_djsrh.npz --config.bits=64

or ``--config.data.features=handcrafted`` (colour histograms + bag of words of the tags,
no encoder needed). The authors train 300 epochs (evaluating every 40 and keeping the best
on the test queries; here the last epoch is evaluated once).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (configs/common.py: the keys every method shares)
import ml_collections  # noqa: E402


def jdsh_section(**values) -> ml_collections.ConfigDict:
    """``config.jdsh``: the authors' MIRFlickr constants (their JSON names in brackets),
    overridden by ``values``."""
    jdsh = ml_collections.ConfigDict()
    jdsh.text_hidden_dim = 4096  # TxtNet: Linear(dT, 4096) -> ReLU -> Linear(4096, K)
    # S~ = image_weight S_I + text_weight S_T + high_order_weight (S_high + S_high^T) / 2
    jdsh.image_weight = 0.5  # [alpha]
    jdsh.text_weight = 0.1  # [beta]
    jdsh.high_order_weight = 0.4  # [lamb]
    jdsh.scale = 1.4  # [mu]  S = scale * DSDW(S~)
    jdsh.intra_weight = 0.1  # [INTRA] weight of the image-image and text-text terms
    # DSDW: left = left_loc - left_width * left_scale, right = right_loc + right_width * right_scale
    jdsh.left_loc = -0.49  # [LOC_LEFT]
    jdsh.left_scale = 0.019  # [SCALE_LEFT]
    jdsh.left_width = 2.0  # [ALPHA]
    jdsh.right_loc = -0.49  # [LOC_RIGHT]
    jdsh.right_scale = 0.088  # [SCALE_RIGHT]
    jdsh.right_width = 4.0  # [BETA]
    jdsh.min_value = -0.52  # [MIN]  S~ < left:  S~ *= 1 + left_gain exp(-(S~ - min_value))
    jdsh.max_value = 0.68  # [MAX]   S~ > right: S~ *= 1 + right_gain exp(S~ - max_value)
    jdsh.left_gain = 0.1  # [L1]
    jdsh.right_gain = 0.2  # [L2]
    # fixed: the constants above; fitted: loc / scales / min / max fitted to S~ of the first
    # fit_batches training batches (mode, Laplace and Gaussian flanks; docs/jdsh.md);
    # none: no DSDW (ablation).
    jdsh.dsdw = "fixed"
    jdsh.fit_batches = 50
    for key, value in values.items():
        jdsh[key] = value
    return jdsh


def train_section(**values) -> ml_collections.ConfigDict:
    """``config.train``: the authors' SGD (both networks), overridden by ``values``."""
    train = ml_collections.ConfigDict()
    train.global_batch_size = 32  # [BATCH_SIZE]; the incomplete last batch is dropped
    train.num_epochs = 300  # [NUM_EPOCH]
    train.learning_rate = 0.01  # [LR_IMG], [LR_TXT]
    train.momentum = 0.9  # [MOMENTUM]
    train.weight_decay = 5e-4  # [WEIGHT_DECAY], torch-style: added to the gradient
    train.log_every_steps = 100
    train.checkpoint_every_steps = 2000
    train.max_checkpoints_to_keep = 2
    train.max_steps = -1  # -1: num_epochs * steps_per_epoch
    for key, value in values.items():
        train[key] = value
    return train


def get_config() -> ml_collections.ConfigDict:
    config = common.get_config()
    config.method = "jdsh"
    config.bits = 64
    config.data.name = "mirflickr"
    config.data.num_query = 2000
    config.data.num_train = 5000
    config.data.split_protocol = "djsrh"
    config.data.image_size = 64  # only read for features=handcrafted (colour histograms)
    config.data.features = ""  # required: a feature file (launch/encode.py) or "handcrafted"
    config.eval.top_k = 50  # MAP@50, the authors' calculate_top_map
    config.eval.batch_size = 1000
    config.train = train_section()
    config.jdsh = jdsh_section()
    return config
