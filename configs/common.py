"""The keys every method shares: seed, code length, data, evaluation.

Method configs (default.py for FJSPH, jspsh.py, jdsh_*.py) start from this and add
their own section; `--config.a.b=value` overrides any key.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.method = "fjsph"  # fjsph | jspsh | jdsh (fjsph_jax.methods)
    config.seed = 0
    config.bits = 32

    # ---- data -------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    config.data.name = "synthetic"  # synthetic | mirflickr | nuswide | coco
    config.data.manual_dir = ""  # where a real dataset's files live
    config.data.num_items = 22000  # synthetic only
    config.data.image_size = 32  # synthetic scenes are rendered at this size
    config.data.num_query = 1000
    config.data.num_train = 20000
    # Feature vectors instead of pixels (methods on features; FJSPH frozen_encoder):
    # "" = the towers' features, "handcrafted" = colour histograms + bag-of-words,
    # or a .mat / .npz file with I_tr, T_tr, L_tr, I_te, T_te, L_te.
    config.data.features = ""
    config.data.num_validation = 1000  # queries carved from train when eval.split=validation
    config.data.split_seed = 0
    config.data.split_protocol = "random"  # random | permutation (DCHMT/MITH) | small
    config.data.data_dir = ""  # built datasets; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
    config.data.image_root = ""  # where .mat layouts' absolute image paths are re-rooted
    config.data.min_tag_count = 20  # MIRFlickr official zips: keep tags used >= this often
    config.data.caption = "first"  # COCO: first | random | an index
    config.data.resize = "center_crop"  # center_crop | squash
    # memory: decode every image once into RAM (synthetic, small datasets);
    # stream: read batches from the ArrayRecord build, decoded on grain threads per step.
    config.data.loader = "memory"  # memory | stream
    config.data.read_threads = 2  # threads loading batches ahead of the train step
    config.data.context_length = 24  # text tokens, incl. bos/eos
    config.data.image_mean = (0.5, 0.5, 0.5)  # per-channel normalisation on device
    config.data.image_std = (0.5, 0.5, 0.5)

    # ---- evaluation -------------------------------------------------------
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 500
    config.eval.top_k = 100  # MAP@K next to MAP@all
    config.eval.map_convention = ""  # top_k | dcmh; "" = the method's own paper's
    config.eval.split = "test"  # test | validation (queries carved from train: tune here)
    config.eval.precision_ns = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
    config.eval.query_chunk = 256
    return config
