"""JSPSH as a method of the shared loop: one closed-form fit on the training features.

``fit`` runs :func:`.solver.fit` on the training rows' image / text features and labels
(``config.jspsh`` holds the authors' hyper-parameters). Codes are sparse: {0, 1} rows of
dimension ``D = bits / sparsity`` with exactly ``r = bits`` ones, ranked by inner product.

* queries: ``top_r(normalize(x) W)`` with the query's modality's projection;
* database: the training codes ``B`` (one code per item for both modalities, as in the
  authors' ``evaluate_JSPSH.m``, where the database is the training set); database rows
  outside the training set (the demo's split trains on a subset of the database) are
  coded by the hash functions like queries.

``config.jspsh.dtype = "float64"`` runs the solve in double precision (x64 enabled for
the fit and the encoding only); the default is float32.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from fjsph_jax import configuration as cfg
from fjsph_jax import parallel
from fjsph_jax.methods.base import ClosedFormMethod
from fjsph_jax.methods.jspsh import solver

DTYPES = ("float32", "float64")


def params_from_config(jspsh, cluster_ks) -> solver.JSPSHParams:
    """:class:`solver.JSPSHParams` from ``config.jspsh`` (``lam`` is ``config.jspsh.lam``)."""
    return solver.JSPSHParams(
        mu=float(jspsh.mu), alpha=float(jspsh.alpha), omega=float(jspsh.omega),
        beta=float(jspsh.beta), theta=float(jspsh.theta), lam=float(jspsh.lam),
        iterations=int(jspsh.iterations), sparsity=float(jspsh.sparsity),
        anchors=int(jspsh.anchors), cluster_ks=tuple(int(k) for k in cluster_ks),
        kmeans_iters=int(jspsh.kmeans_iters),
        rank_rule=str(jspsh.get("rank_rule", "row_space")),
    )


JSPSH_KEYS = ("mu", "alpha", "omega", "beta", "theta", "lam", "iterations", "sparsity",
              "anchors", "cluster_ks", "kmeans_iters")


def validate_jspsh_config(config) -> None:
    """``config.data.features`` set, and ``config.jspsh``: every key present, finite weights >= 0, a finite ridge > 0,
    iterations / anchors / ks positive integers, a sparsity whose code dimension
    ``bits / sparsity`` is a whole number, a known dtype and H-step rank rule."""
    if "jspsh" not in config:
        raise cfg.ConfigError("config.method='jspsh' needs a config.jspsh section: start from "
                              "configs/jspsh.py")
    cfg.require_features(config, "JSPSH")
    j = config.jspsh
    cfg.require_keys(j, "config.jspsh", JSPSH_KEYS, "configs/jspsh.py")
    for key in ("mu", "alpha", "omega", "beta", "theta"):
        cfg.finite(f"config.jspsh.{key}", j[key])
        cfg.non_negative(f"config.jspsh.{key}", j[key])
    cfg.finite("config.jspsh.lam", j.lam)
    cfg.positive_number("config.jspsh.lam", j.lam)
    cfg.positive("config.jspsh.iterations", j.iterations)
    cfg.positive("config.jspsh.anchors", j.anchors)
    cfg.positive("config.jspsh.kmeans_iters", j.kmeans_iters)
    cfg.in_range("config.jspsh.sparsity", j.sparsity, 0.0, 1.0, high_open=False)
    if j.sparsity <= 0:
        raise cfg.ConfigError(f"config.jspsh.sparsity={j.sparsity!r} must be > 0 (0.05: "
                              "codes of 20 x bits dimensions)")
    dim = config.bits / j.sparsity
    if abs(dim - round(dim)) > 1e-6:
        raise cfg.ConfigError(
            f"config.bits / config.jspsh.sparsity = {config.bits} / {j.sparsity} = {dim:g} "
            "must be a whole number (the code dimension)")
    cfg.choice("config.jspsh.dtype", j.get("dtype", "float32"), DTYPES)
    cfg.choice("config.jspsh.rank_rule", j.get("rank_rule", "row_space"), solver.RANK_RULES)
    if not isinstance(j.cluster_ks, (tuple, list)) or not tuple(j.cluster_ks):
        raise cfg.ConfigError(f"config.jspsh.cluster_ks={j.cluster_ks!r} must be a non-empty "
                              "tuple of k-means sizes such as (100, 200, 500)")
    cfg.validate_cluster_ks("config.jspsh", tuple(j.cluster_ks), (), None)


class JSPSHMethod(ClosedFormMethod):
    """Joint Sample-wise and cluster-wise Similarity Preserving Hashing (shallow, sparse)."""

    name = "jspsh"
    title = "JSPSH"
    code_format = "sparse"
    map_convention = "top_k"  # the authors' mAP.m

    @classmethod
    def validate_config(cls, config, num_devices: int) -> None:
        del num_devices  # the solve is whole-matrix algebra, not a batched step
        validate_jspsh_config(config)

    @classmethod
    def input_kind(cls, config) -> str:
        return "features"

    def __init__(self, config, data, mesh, towers=None):
        super().__init__(config, data, mesh, towers)
        self.jspsh = config.jspsh
        self.float64 = self.jspsh.get("dtype", "float32") == "float64"
        train = data.splits.train
        self._train_labels = np.asarray(data.labels[train])
        n = len(train)
        dim = self.code_dim
        if dim >= n:
            raise cfg.ConfigError(
                f"JSPSH codes have bits / sparsity = {config.bits} / {self.jspsh.sparsity} = "
                f"{dim} dimensions, which must be fewer than the {n} training rows: lower "
                "config.bits or raise config.jspsh.sparsity")
        if self.jspsh.anchors > n:
            raise cfg.ConfigError(
                f"config.jspsh.anchors={self.jspsh.anchors} exceeds the {n} training rows")
        ks, note = solver.cap_cluster_ks(self._train_labels, tuple(self.jspsh.cluster_ks))
        if note:
            logging.warning("config.jspsh.cluster_ks: %s", note)
        self.cluster_ks = ks
        self.params = params_from_config(self.jspsh, ks)
        self._train_position = np.full(data.num_items, -1, np.int64)
        self._train_position[train] = np.arange(n)
        self._dims = data.feature_dims

    @property
    def code_dim(self) -> int:
        return solver.code_dim(self.bits, float(self.jspsh.sparsity))

    def describe(self) -> str:
        return (f"JSPSH, {self.bits} ones in {self.code_dim}-d codes, "
                f"{'float64' if self.float64 else 'float32'}")

    def _dtype(self):
        return jnp.float64 if self.float64 else jnp.float32

    def init_state(self) -> solver.JSPSHState:
        n, dim = len(self.data.splits.train), self.code_dim
        d_image, d_text = self._dims
        with jax.enable_x64(self.float64):
            state = solver.JSPSHState(
                B=jnp.zeros((n, dim), jnp.uint8),
                image_W=jnp.zeros((d_image, dim), self._dtype()),
                text_W=jnp.zeros((d_text, dim), self._dtype()),
                h_ranks=jnp.zeros((int(self.jspsh.iterations),), jnp.int32),
            )
            return parallel.put_replicated(state, self.mesh)

    def fit(self, state):
        del state
        rows = self.data.load_rows(self.data.splits.train)
        with jax.enable_x64(self.float64):
            dtype = np.float64 if self.float64 else np.float32
            fitted = solver.fit(
                rows["image_features"].astype(dtype), rows["text_features"].astype(dtype),
                self._train_labels, bits=self.bits, params=self.params,
                key=jax.random.PRNGKey(self.config.seed),
            )
            fitted = fitted._replace(B=fitted.B.astype(jnp.uint8))
            fitted = parallel.put_replicated(fitted, self.mesh)
        ranks = [int(r) for r in np.asarray(fitted.h_ranks)]
        return fitted, {"h_step_ranks": ranks, "code_dim": self.code_dim,
                        "cluster_ks": list(self.cluster_ks)}

    def _hash(self, state, features: np.ndarray, modality: str) -> np.ndarray:
        projection = state.image_W if modality == "image" else state.text_W
        with jax.enable_x64(self.float64):
            codes = solver.encode(jnp.asarray(features, projection.dtype), projection,
                                  self.bits)
            return np.asarray(codes).astype(np.uint8)

    def encode(self, state, rows: np.ndarray, *, role: str) -> dict:
        rows = np.asarray(rows)
        features = self.data.load_rows(rows)
        out = {
            "image": self._hash(state, features["image_features"], "image"),
            "text": self._hash(state, features["text_features"], "text"),
        }
        if role == "database":
            position = self._train_position[rows]
            trained = position >= 0
            codes = np.asarray(state.B)[position[trained]]
            for modality in out:
                out[modality][trained] = codes
        return out
