"""The demo (configs/default.py) shrunk to seconds: a smoke test of every launch path.

    python launch/train.py --config=configs/tiny.py --workdir=/tmp/tiny
    python launch/train.py --config=configs/tiny.py --config.train.max_steps=200 \\
        --config.eval.every_steps=50 --config.train.tensorboard=True

256 synthetic scenes (32 queries, 64 training rows), micro towers, 16 bits, batches of
16: 2 epochs of 4 steps. The same code paths as the demo (end to end FJSPH, code bank,
checkpoints, evaluation), in a few seconds of CPU time after compilation. The tests
train with this config (tests/tiny.py), and so can CI and a new cluster: every key can
be overridden with ``--config.a.b=value``, e.g. ``--config.train.mode=frozen_encoder
--config.data.features=handcrafted`` for the cheapest run (no towers; what
tests/test_multiprocess.py launches as 2 processes).

Keys of the shared loop that the other configs leave at their defaults are set here, so
the command line can override them:

* ``train.tensorboard``: also write TensorBoard event files (``<workdir>/tensorboard``;
  needs ``pip install -e .[tensorboard]``);
* ``eval.every_steps``: evaluate every N steps (0: only at the end), ``eval_*`` records
  in metrics.jsonl.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # noqa: E402


def get_config():
    config = default.get_config()
    config.data.num_items = 256
    config.data.num_query = 32
    config.data.num_train = 64
    config.data.context_length = 12
    config.model.vision = "vit_micro"
    config.model.text = "text_micro"
    config.model.feature_dim = 32
    config.model.hash_hidden_dim = 32
    config.bits = 16
    config.train.global_batch_size = 16
    config.train.num_epochs = 2
    config.train.warmup_steps = 2
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 4
    config.train.tensorboard = False
    config.loss.cluster_ks = (4, 8)
    config.loss.kmeans_iters = 10
    config.codes.update_every_steps = 3
    config.eval.batch_size = 64
    config.eval.top_k = 20
    config.eval.precision_ns = (1, 5, 20)
    config.eval.query_chunk = 16
    config.eval.every_steps = 0
    return config
