"""JSPSH (TCSVT 2024) on features: the authors' MIRFlickr hyper-parameters.

`python launch/train.py --config=configs/jspsh.py` runs on the embedded demo's hand-crafted
features (colour histograms + caption bag-of-words); `--config.data.features=PATH` reads a
.mat / .npz feature file (I_tr, T_tr, L_tr, I_te, T_te, L_te: tr is the training set and the
database, te the queries), e.g. one written by `python launch/encode.py --features=PATH`.
Codes: `bits` ones in `bits / sparsity` dimensions, ranked by inner product.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import ml_collections  # noqa: E402


def get_config() -> ml_collections.ConfigDict:
    config = common.get_config()
    config.method = "jspsh"
    config.data.features = "handcrafted"  # or a .mat / .npz path
    config.eval.top_k = 50  # the authors report MAP@50 next to MAP@all (mAP.m: top_k)

    config.jspsh = ml_collections.ConfigDict()
    config.jspsh.mu = 3.0  # interaction term of the two hash functions
    config.jspsh.alpha = 1.0  # cluster-wise vs sample-wise similarity
    config.jspsh.omega = 10.0  # omega B / omega H in the discrete steps
    config.jspsh.beta = 0.01  # label-anchor term of the hash functions
    config.jspsh.theta = 10.0  # adds theta n r / D to every B-step score: no effect on top-r
    config.jspsh.lam = 1e-3  # ridge of the hash functions
    config.jspsh.iterations = 5  # discrete rounds, and hash-function rounds
    config.jspsh.sparsity = 0.05  # r / D: D = 20 r
    config.jspsh.anchors = 1000  # anchor rows of the label term (authors: 5000 on NUS-WIDE)
    config.jspsh.cluster_ks = (100, 200, 500)  # cosine k-means over labels, capped by the
    # number of distinct label vectors; weights k_j / sum(k)
    config.jspsh.kmeans_iters = 100  # MATLAB's kmeans default MaxIter
    config.jspsh.dtype = "float32"  # float32 | float64
    # H step: "row_space" keeps the row space of B and pads every null direction (ours);
    # "authors" is train_JSPSH.m's eig(Z'Z) > 1e-6, to reproduce their numbers
    # (docs/benchmarks.md: JSPSH versus Octave, "The authors' rank rule on our side")
    config.jspsh.rank_rule = "row_space"
    return config
