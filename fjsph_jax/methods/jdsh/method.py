"""JDSH as a method of the shared loop: networks, joint-modal target, SGD step, encoder.

Per run (``JDSHMethod(config, data, mesh)``), on feature vectors (``config.data.features``:
a feature file such as ``launch/encode.py --features`` writes, or ``"handcrafted"``):

* the networks (:mod:`.model`): image hash layer ``Linear(dI -> K)``, text MLP
  ``Linear(dT -> H) -> ReLU -> Linear(H -> K)``, codes ``tanh(sqrt(epoch + 1) h)``;
* the state :class:`TrainState` (params, SGD momentum buffers, step), replicated;
* ``train_step``: one ``jax.jit`` (state donated, shardings kept) over the global batch,
  which arrives split over the mesh axis ``data``: the target ``S [B, B]`` of the GLOBAL
  batch (:func:`~.objective.similarity_target`, XLA gathers the features), the loss
  (:func:`~.objective.loss`), the gradient (all-reduced by XLA) and the SGD update. The
  epoch (for ``a = sqrt(epoch + 1)``) is ``state.step // steps_per_epoch`` inside the jit:
  one compilation for the whole run, and a resumed run uses the epoch of its step;
* optimiser: the authors' ``torch.optim.SGD(lr, momentum=0.9, weight_decay=5e-4)`` for
  both networks: ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum))``,
  i.e. ``g <- g + wd p`` BEFORE the momentum buffer ``v <- m v + g`` (``v_0 = g``) and
  ``p <- p - lr v``: torch's coupled L2 decay (on biases too), not AdamW-style decoupled
  decay;
* ``config.jdsh.dsdw = "fitted"``: the DSDW constants are fitted once, when the method is
  built, to ``S~`` of the first ``config.jdsh.fit_batches`` training batches (the batches
  the run trains on first; :func:`~.objective.fit_dsdw`); a resumed run fits the same
  values again (same rows, same arithmetic);
* ``encode``: ``sign_pm(h)`` of both networks (= the sign of ``tanh(a h)``), query and
  database alike.

Unsupervised: training never reads the labels (only the evaluation does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fjsph_jax import configuration as cfg
from fjsph_jax import parallel
from fjsph_jax.binary import sign_pm
from fjsph_jax.data.batches import EpochBatcher
from fjsph_jax.methods.base import GradientMethod
from fjsph_jax.methods.jdsh import objective
from fjsph_jax.methods.jdsh.model import JDSHNetworks

# config.jdsh keys that are real numbers of any sign / numbers >= 0 / numbers > 0
ANY_SIGN_KEYS = ("left_loc", "right_loc", "min_value", "max_value")
NON_NEGATIVE_KEYS = ("image_weight", "text_weight", "high_order_weight", "intra_weight",
                     "left_scale", "left_width", "right_scale", "right_width", "left_gain",
                     "right_gain")
POSITIVE_KEYS = ("scale",)


class TrainState(NamedTuple):
    """Everything a resumed run needs (a pytree; saved whole by orbax)."""

    params: Any  # nnx.State of both networks, replicated
    opt_state: Any  # optax SGD state (momentum buffers), replicated
    step: jax.Array  # int32 scalar: completed steps (= the data position)


def validate_jdsh_config(config, num_devices: int) -> None:
    """``config.train`` (shared loop keys + ``momentum``, ``weight_decay``) and ``config.jdsh``."""
    cfg.validate_training(config, num_devices)
    train = config.train
    for key in ("momentum", "weight_decay"):
        if key not in train:
            raise cfg.ConfigError(f"config.train.{key} is missing (JDSH: 0.9 and 5e-4)")
    cfg.in_range("config.train.momentum", train.momentum, 0.0, 1.0, high_open=True)
    for key in ("learning_rate", "weight_decay"):
        cfg.finite(f"config.train.{key}", train[key])
    cfg.non_negative("config.train.weight_decay", train.weight_decay)
    cfg.require_features(config, "JDSH")
    if "jdsh" not in config:
        raise cfg.ConfigError("config.jdsh is missing: start from configs/jdsh_*.py")
    jdsh = config.jdsh
    cfg.require_keys(jdsh, "config.jdsh", (*objective.AUTHOR_KEYS, "text_hidden_dim", "dsdw",
                                           "fit_batches"), "configs/jdsh_mirflickr.py")
    cfg.positive("config.jdsh.text_hidden_dim", jdsh.text_hidden_dim)
    cfg.choice("config.jdsh.dsdw", jdsh.dsdw, objective.DSDW_MODES)
    cfg.positive("config.jdsh.fit_batches", jdsh.fit_batches)
    for key in ANY_SIGN_KEYS:
        cfg.finite(f"config.jdsh.{key}", jdsh[key])
    for key in NON_NEGATIVE_KEYS:
        cfg.finite(f"config.jdsh.{key}", jdsh[key])
        cfg.non_negative(f"config.jdsh.{key}", jdsh[key])
    for key in POSITIVE_KEYS:
        cfg.finite(f"config.jdsh.{key}", jdsh[key])
        cfg.positive_number(f"config.jdsh.{key}", jdsh[key])


def build_optimizer(config) -> optax.GradientTransformation:
    """torch ``SGD(lr, momentum, weight_decay)``: L2 term added to the gradient, then momentum."""
    train = config.train
    momentum = float(train.momentum) or None
    return optax.chain(
        optax.add_decayed_weights(float(train.weight_decay)),
        optax.sgd(float(train.learning_rate), momentum=momentum),
    )


def state_shardings(state: TrainState, mesh) -> TrainState:
    rep = parallel.replicated(mesh)
    return jax.tree.map(lambda _: rep, state)


def train_step(state: TrainState, batch: dict, *, graphdef, optimizer, params: dict,
               steps_per_epoch: int):
    """One SGD step on a global batch; pure (jit it with the keywords static)."""
    epoch = state.step // steps_per_epoch
    image_features, text_features = batch["image_features"], batch["text_features"]
    target, stats = objective.similarity_target_with_stats(image_features, text_features,
                                                           params)

    def loss_fn(p):
        model = nnx.merge(graphdef, p)
        code_i, code_t = model.codes(image_features, text_features, epoch)
        terms = objective.loss_terms(code_i, code_t, target)
        return objective.combine(terms, params), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **terms, **stats, "grad_norm": optax.tree.norm(grads),
               "code_scale": jnp.sqrt(epoch.astype(jnp.float32) + 1.0)}
    return TrainState(new_params, opt_state, state.step + 1), metrics


def make_train_step(graphdef, optimizer, params: dict, steps_per_epoch: int, shardings,
                    replicated) -> Callable:
    """``jax.jit`` of :func:`train_step` with the state donated and its shardings kept."""

    def step(state, batch):
        return train_step(state, batch, graphdef=graphdef, optimizer=optimizer, params=params,
                          steps_per_epoch=steps_per_epoch)

    return jax.jit(step, donate_argnums=(0,), out_shardings=(shardings, replicated))


def make_encode_fn(graphdef) -> Callable:
    """Jitted ``(params, batch) -> (image_codes, text_codes)``, int8 ``[B, K]`` in {-1, +1}."""

    @jax.jit
    def encode(params, batch):
        model = nnx.merge(graphdef, params)
        h_i, h_t = model.logits(batch["image_features"], batch["text_features"])
        return sign_pm(h_i), sign_pm(h_t)

    return encode


def fit_constants(load_rows, train_rows: np.ndarray, batcher: EpochBatcher, num_batches: int,
                  params) -> dict[str, float]:
    """:func:`~.objective.fit_dsdw` on the off-diagonal ``S~`` of the first ``num_batches``
    training batches (rows from ``batcher``, the run's own batch order)."""
    positions = np.stack([batcher.indices(step) for step in range(num_batches)])
    rows = np.asarray(train_rows)[positions.ravel()]
    arrays = load_rows(rows)
    shape = positions.shape
    image = np.asarray(arrays["image_features"], np.float32).reshape(*shape, -1)
    text = np.asarray(arrays["text_features"], np.float32).reshape(*shape, -1)
    weights = {k: objective.param(params, k)
               for k in ("image_weight", "text_weight", "high_order_weight")}
    similarity = jax.jit(jax.vmap(lambda i, t: objective.joint_similarity(i, t, weights)))
    return objective.fit_dsdw(objective.off_diagonal(jax.device_get(similarity(image, text))))


class JDSHMethod(GradientMethod):
    """Joint-modal Distribution-based Similarity Hashing (see the module docstring)."""

    name = "jdsh"
    title = "JDSH"
    code_format = "pm1"
    map_convention = "top_k"  # the authors' calculate_top_map (MAP@50)
    supervised = False

    @classmethod
    def validate_config(cls, config, num_devices: int) -> None:
        validate_jdsh_config(config, num_devices)

    @classmethod
    def input_kind(cls, config) -> str:
        return "features"

    @classmethod
    def needs_towers(cls, config) -> bool:
        return not config.data.get("features", "")

    def __init__(self, config, data, mesh, towers=None):
        super().__init__(config, data, mesh, towers)
        num_train = len(data.splits.train)
        batch_size = config.train.global_batch_size
        if batch_size > num_train:
            raise cfg.ConfigError(
                f"config.train.global_batch_size={batch_size} exceeds the {num_train} "
                "training rows"
            )
        if data.feature_dims is None:
            raise ValueError("JDSH reads feature vectors; the run's data has none")
        image_dim, text_dim = data.feature_dims
        self.model = JDSHNetworks(image_dim, text_dim, config.bits, config.jdsh.text_hidden_dim,
                                  seed=config.seed)
        self.graphdef, _ = nnx.split(self.model)
        self.batcher = EpochBatcher(num_train, batch_size, config.seed)
        self.steps_per_epoch = self.batcher.steps_per_epoch
        self.total_steps = (
            config.train.max_steps if config.train.max_steps > 0
            else config.train.num_epochs * self.steps_per_epoch
        )
        self.optimizer = build_optimizer(config)
        self.fitted = None
        if config.jdsh.dsdw == "fitted":
            self.fitted = fit_constants(data.load_rows, data.splits.train, self.batcher,
                                        config.jdsh.fit_batches, config.jdsh)
        self.objective = objective.with_fitted(config.jdsh, self.fitted)
        self._step_fn = None
        self._encode_fn = make_encode_fn(self.graphdef)

    def describe(self) -> str:
        mode = self.objective["dsdw"]
        if mode == "none":
            return f"JDSH, {self.bits} bits, no DSDW"
        left, right = objective.dsdw_thresholds(self.objective)
        fitted = ""
        if self.fitted is not None:
            fitted = " (" + ", ".join(f"{k} {v:.4g}" for k, v in self.fitted.items()) + ")"
        return (f"JDSH, {self.bits} bits, DSDW {mode}{fitted}: left < {left:.4g}, "
                f"right > {right:.4g}")

    def init_state(self) -> TrainState:
        _, params = nnx.split(self.model)
        state = TrainState(params, self.optimizer.init(params), jnp.asarray(0, jnp.int32))
        shardings = state_shardings(state, self.mesh)
        state = jax.device_put(state, shardings)
        self._step_fn = make_train_step(self.graphdef, self.optimizer, self.objective,
                                        self.steps_per_epoch, shardings,
                                        parallel.replicated(self.mesh))
        return state

    def train_step(self, state: TrainState, batch: dict, step: int):
        del step  # the epoch comes from state.step inside the jit
        return self._step_fn(state, batch)

    def encode(self, state: TrainState, rows: np.ndarray, *, role: str) -> dict:
        del role  # queries and database items are coded by the same networks
        image, text = parallel.map_batches(
            lambda batch: self._encode_fn(state.params, batch), self.data.load_rows, rows,
            batch_size=self.config.eval.batch_size, mesh=self.mesh,
        )
        return {"image": image, "text": text}
