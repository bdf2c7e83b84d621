"""FJSPH as a method of the shared loop: model, label similarity, code bank, step, encoder.

Per run (``FJSPHMethod(config, data, mesh, towers)``):

* the network (:mod:`.model`): towers + hash heads end to end, or trainable projections +
  heads on feature vectors in ``frozen_encoder`` mode (tower features, a feature file or
  the demo's hand-crafted features, all through ``data.load_rows``);
* the joint label similarity of the training rows (sample-wise cosine of label vectors +
  cluster-wise k-means, :mod:`fjsph_jax.similarity`, low rank);
* the state :class:`~.step.TrainState` (params, AdamW state, the code bank, step, key,
  the bank's cached statistics), created by one ``jax.jit`` with ``out_shardings``
  (:func:`create_train_state`): every device computes its own part, no host holds the
  whole tree;
* ``before_step``: every ``update_every`` steps the discrete code update of the bank and
  its statistics (:func:`~.step.code_update_and_statistics`), ``train_step``:
  :func:`~.step.train_step` (jit, donated);
* ``encode``: ``sign_pm`` of the hash heads (no FLIP masking), query and database alike.

Arrays over the N training rows (the bank [N, K] x 3 and ``seen``, the label factors
[N, C], the cluster ids [m, N]) are padded to a multiple of the device count
(:func:`fjsph_jax.parallel.padded_num_rows`) and split over ``data``; the padding rows
are masked out of everything (see :func:`fjsph_jax.similarity.pad_similarity`).
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from fjsph_jax import configuration as cfg
from fjsph_jax import parallel
from fjsph_jax import similarity as similarity_lib
from fjsph_jax.binary import sign_pm
from fjsph_jax.data.batches import EpochBatcher
from fjsph_jax.methods.base import GradientMethod
from fjsph_jax.methods.fjsph import build
from fjsph_jax.methods.fjsph import code_bank as bank_lib
from fjsph_jax.methods.fjsph.step import (
    StepSettings,
    TrainState,
    code_update_and_statistics,
    make_train_step,
    tower_features,
)

# Above this many training rows the likelihood form's [B, N] bank term gets a warning.
LIKELIHOOD_WARN_ROWS = 50_000
# The state is created with XLA's algebraic simplifier off: it would fold the constant
# factors of initialisers such as ``0.02 * normal(...)`` into one (one rounding less),
# and the parameters would differ in the last bit from the same initialisers run op by
# op. With it off, jit-created states equal the eagerly built ones bit for bit.
_CREATE_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "algsimp"}

TRAIN_MODES = ("end_to_end", "frozen_encoder")
INTERACTIONS = ("none", "transformer")
SIMILARITY_FORMS = ("mse", "likelihood")
DTYPES = ("float32", "bfloat16")


def validate_fjsph_config(config, num_devices: int) -> None:
    """FJSPH's keys: ``model``, ``init``, ``train``, ``loss``, ``codes``."""
    from fjsph_jax.models import registry

    cfg.validate_training(config, num_devices)
    cfg.choice("config.model.vision", config.model.vision, registry.VISION_PRESETS)
    cfg.choice("config.model.text", config.model.text, registry.TEXT_PRESETS)
    cfg.choice("config.model.interaction", config.model.interaction, INTERACTIONS)
    cfg.choice("config.model.dtype", config.model.dtype, DTYPES)
    cfg.choice("config.train.mode", config.train.mode, TRAIN_MODES)
    fsdp = config.train.get("fsdp", 1)
    cfg.positive("config.train.fsdp", fsdp)
    if num_devices % fsdp:
        raise cfg.ConfigError(f"config.train.fsdp={fsdp} must divide the {num_devices} devices")
    cfg.positive("config.codes.updates_per_epoch", config.codes.get("updates_per_epoch", 1))
    cfg.choice("config.loss.similarity_form", config.loss.similarity_form, SIMILARITY_FORMS)
    cfg.in_range("config.model.mask_ratio", config.model.mask_ratio, 0.0, 1.0, high_open=True)
    cfg.in_range("config.loss.eta", config.loss.eta, 0.0, 1.0, high_open=False)
    cfg.in_range("config.loss.similarity_floor", config.loss.similarity_floor, -1.0, 1.0,
                 high_open=True)
    cfg.positive("config.model.feature_dim", config.model.feature_dim)
    cfg.positive("config.codes.num_sweeps", config.codes.num_sweeps)
    cfg.non_negative("config.codes.similarity_weight", config.codes.similarity_weight)
    cfg.non_negative("config.codes.quantization_weight", config.codes.quantization_weight)
    for key in ("contrastive_weight", "similarity_weight", "bank_similarity_weight",
                "quantization_weight", "balance_weight", "fused_weight"):
        cfg.non_negative(f"config.loss.{key}", config.loss[key])
    features = config.data.get("features", "")
    if features and config.train.mode == "end_to_end":
        raise cfg.ConfigError(
            f"config.data.features={features!r} gives feature vectors, but "
            "config.train.mode='end_to_end' trains the towers on pixels: use "
            "--config.train.mode=frozen_encoder, or --config.data.features='' for pixels"
        )
    needs_towers = config.train.mode == "end_to_end" or not features
    if needs_towers and not config.init.checkpoint and not config.init.get("from_scratch", False):
        what = ("trains" if config.train.mode == "end_to_end" else "hashes the features of")
        raise cfg.ConfigError(
            f"config.init.checkpoint is empty, so FJSPH {what} randomly initialised "
            f"{config.model.vision} / {config.model.text} towers. Give "
            "--config.init.checkpoint=PATH (a pretrained CLIP/FLIP, see docs/pretrained.md), "
            "or --config.init.from_scratch=True to start from random towers on purpose"
        )
    ks = tuple(config.loss.cluster_ks)
    cfg.validate_cluster_ks("config.loss", ks, tuple(config.loss.cluster_weights),
                            None if features else config.data.num_train)
    if config.loss.eta > 0 and not ks:
        raise cfg.ConfigError("config.loss.eta > 0 needs at least one k in config.loss.cluster_ks")
    validate_fjsph_numbers(config)


def validate_fjsph_numbers(config) -> None:
    """The FJSPH keys that are plain numbers, flags and paths: types and ranges."""
    model, train, loss, codes = config.model, config.train, config.loss, config.codes
    cfg.positive("config.model.hash_hidden_dim", model.hash_hidden_dim)
    cfg.positive("config.model.interaction_layers", model.interaction_layers)
    cfg.positive("config.model.interaction_heads", model.interaction_heads)
    if model.interaction == "transformer" and model.feature_dim % model.interaction_heads:
        raise cfg.ConfigError(
            f"config.model.interaction_heads={model.interaction_heads} must divide "
            f"config.model.feature_dim={model.feature_dim}")
    from fjsph_jax.encoders import compute_options

    compute_options(config)  # attention, remat, scan_layers
    cfg.string("config.init.checkpoint", config.init.checkpoint)
    cfg.boolean("config.init.from_scratch", config.init.get("from_scratch", False))
    cfg.positive_number("config.train.encoder_learning_rate", train.encoder_learning_rate)
    cfg.integer("config.train.warmup_steps", train.warmup_steps, 0)
    cfg.non_negative("config.train.weight_decay", train.weight_decay)
    cfg.positive_number("config.train.grad_clip_norm", train.grad_clip_norm)
    cfg.positive_number("config.loss.likelihood_scale", loss.likelihood_scale)
    cfg.positive("config.loss.kmeans_iters", loss.kmeans_iters)
    every = codes.update_every_steps
    if not isinstance(every, int) or isinstance(every, bool) or (every < 1 and every != -1):
        raise cfg.ConfigError(
            f"config.codes.update_every_steps={every!r} must be -1 (steps per epoch / "
            "config.codes.updates_per_epoch) or a positive integer")


def code_update_every(config, steps_per_epoch: int) -> int:
    """Steps between discrete code updates: ``config.codes.update_every_steps``, or when
    that is <= 0, ``steps_per_epoch // config.codes.updates_per_epoch`` (at least 1)."""
    every = config.codes.update_every_steps
    if every > 0:
        return every
    return max(1, steps_per_epoch // config.codes.get("updates_per_epoch", 1))


def make_encode_fn(graphdef, settings: StepSettings) -> Callable:
    """Jitted ``(params, batch) -> (image_codes, text_codes)`` int8 ``[B, K]`` (no masking)."""

    @jax.jit
    def encode(params, batch):
        model = nnx.merge(graphdef, params)
        f_img, f_txt = tower_features(model, batch, settings, None, train=False)
        return sign_pm(model.hash_image(f_img)), sign_pm(model.hash_text(f_txt))

    return encode


def encode_rows(encode_fn: Callable, params, source, rows: np.ndarray, *, batch_size: int,
                mesh) -> tuple[np.ndarray, np.ndarray]:
    """Codes of dataset ``rows`` for both modalities: int8 ``[len(rows), K]`` each.

    ``source`` is a mapping of ``[N, ...]`` model inputs or a row loader
    (:mod:`fjsph_jax.data.loaders`, e.g. the streamed dataset). Batches are padded to a
    fixed size (a multiple of the device count, so one compilation) and split over the
    mesh; each host loads its slice.
    """
    image, text = parallel.map_batches(
        lambda batch: encode_fn(params, batch), source, rows, batch_size=batch_size, mesh=mesh
    )
    return image, text


def state_shardings(state: TrainState, mesh, num_train: int | None = None) -> TrainState:
    """Params and optimiser state: :func:`fjsph_jax.parallel.param_shardings` (replicated
    on a ``('data',)`` mesh, split over ``fsdp`` on a ``('data', 'fsdp')`` one); step, key
    and bank statistics replicated; code-bank rows split over the batch axes.

    ``state`` may be abstract (``jax.eval_shape``); the bank's rows are its arrays' length
    (padded to a multiple of the device count; ``num_train`` is not needed).
    """
    del num_train  # the bank's own length decides
    rep = parallel.replicated(mesh)
    rows = parallel.rows_sharding(mesh, state.bank.codes.shape[0])
    return TrainState(
        params=parallel.param_shardings(state.params, mesh),
        opt_state=parallel.param_shardings(state.opt_state, mesh),
        bank=jax.tree.map(lambda _: rows, state.bank),
        step=rep,
        rng=rep,
        bank_stats=jax.tree.map(lambda _: rep, state.bank_stats),
    )


def similarity_shardings(sim: similarity_lib.JointSimilarity, mesh):
    rows = parallel.rows_sharding(mesh, sim.num_items)
    cols = NamedSharding(mesh, P(None, *rows.spec))
    rep = parallel.replicated(mesh)
    return sim._replace(label_factors=rows, cluster_ids=cols, cluster_weights=rep, eta=rep)


def pad_similarity_for(sim: similarity_lib.JointSimilarity, mesh):
    """``sim`` padded to a multiple of ``mesh``'s device count and placed on it (rows
    split over ``data``)."""
    sim = similarity_lib.pad_similarity(sim, parallel.padded_num_rows(sim.num_items, mesh))
    return jax.device_put(sim, similarity_shardings(sim, mesh))


def create_train_state(config, make_params: Callable, args, optimizer, num_train: int, mesh,
                       sim: similarity_lib.JointSimilarity | None = None) -> TrainState:
    """The fresh state, created on the mesh by one ``jax.jit`` with ``out_shardings``.

    ``make_params(*args)`` returns the model's parameters (an ``nnx.State``; it builds the
    model, under the trace). The state's abstract shape comes from ``jax.eval_shape``,
    its shardings from :func:`state_shardings`; then every device computes only its part
    (its rows of the bank, its copy of the replicated leaves): no host ever holds the
    whole tree. The bank has ``padded_num_rows(num_train, mesh)`` rows, the first
    ``num_train`` bit for bit those of ``init_code_bank(num_train, ...)``. With ``sim``
    (padded the same way, see :func:`pad_similarity_for`) ``bank_stats`` holds the
    statistics of the initial codes; without, it is None and the step computes them.

    Bit for bit the state of the eager construction for the same seed (see
    ``_CREATE_COMPILER_OPTIONS``).
    """
    num_rows = parallel.padded_num_rows(num_train, mesh)
    if sim is not None and sim.num_items != num_rows:
        raise ValueError(f"sim has {sim.num_items} rows, the bank {num_rows} "
                         f"({num_train} padded for {parallel.num_batch_shards(mesh)} devices): "
                         "pad it with pad_similarity_for(sim, mesh)")

    def create(args, sim):
        key = jax.random.PRNGKey(config.seed)
        params = make_params(*args)
        bank = bank_lib.init_code_bank(num_train, config.bits, jax.random.fold_in(key, 1),
                                       num_rows=num_rows)
        return TrainState(
            params=params,
            opt_state=optimizer.init(params),
            bank=bank,
            step=jnp.asarray(0, jnp.int32),
            rng=jax.random.fold_in(key, 2),
            bank_stats=None if sim is None else bank_lib.bank_statistics(bank.codes, sim),
        )

    abstract = jax.eval_shape(create, args, sim)
    shardings = state_shardings(abstract, mesh)
    return jax.jit(create, out_shardings=shardings,
                   compiler_options=_CREATE_COMPILER_OPTIONS)(args, sim)


def init_train_state(config, model, optimizer, num_train: int, mesh,
                     sim: similarity_lib.JointSimilarity | None = None) -> TrainState:
    """Fresh state on the mesh for an existing ``model`` (its parameters are copied):
    shardings of :func:`state_shardings` (see :func:`create_train_state`;
    FJSPHMethod builds the model inside the jit instead)."""
    _, params = nnx.split(model)
    return create_train_state(config, lambda p: p, (params,), optimizer, num_train, mesh, sim)


class _TracedTowers:
    """A PretrainedTowers whose weights are the (traced) arguments of the state-creating
    jit, so that ``build_model`` copies them without baking them into the program as
    constants; everything else (configs, source, ...) comes from the real towers."""

    def __init__(self, towers, vision_state, text_state, logit_scale):
        object.__setattr__(self, "_towers", towers)
        self._vision_state = vision_state
        self._text_state = text_state
        self.logit_scale = logit_scale

    def __getattr__(self, name):
        return getattr(self._towers, name)

    def vision_state(self):
        return self._vision_state

    def text_state(self):
        return self._text_state


class FJSPHMethod(GradientMethod):
    """FLIP-based Joint Similarity Preserving Hashing (see the module docstring)."""

    name = "fjsph"
    title = "FJSPH"
    code_format = "pm1"
    map_convention = "dcmh"  # its baselines' (DCMH, DCHMT, MITH) calc_map_k

    @classmethod
    def validate_config(cls, config, num_devices: int) -> None:
        validate_fjsph_config(config, num_devices)

    @classmethod
    def input_kind(cls, config) -> str:
        return "pixels" if config.train.mode == "end_to_end" else "features"

    def __init__(self, config, data, mesh, towers=None):
        super().__init__(config, data, mesh, towers)
        self.end_to_end = config.train.mode == "end_to_end"
        num_train = len(data.splits.train)
        if config.train.global_batch_size > num_train:
            raise cfg.ConfigError(
                f"config.train.global_batch_size={config.train.global_batch_size} exceeds the "
                f"{num_train} training rows"
            )
        input_dims = data.feature_dims or (None, None)
        self._build_model = functools.partial(
            build.build_model, config, data.vocab_size, with_encoders=self.end_to_end,
            seed=config.seed, input_dims=input_dims,
        )
        # Shapes only (also checks the towers against the model): no parameter allocated.
        model = nnx.eval_shape(self._make_model, self._tower_weights())
        self.graphdef, params = nnx.split(model)
        batcher = EpochBatcher(num_train, config.train.global_batch_size, config.seed)
        self.steps_per_epoch = batcher.steps_per_epoch
        self.total_steps = (
            config.train.max_steps if config.train.max_steps > 0
            else config.train.num_epochs * batcher.steps_per_epoch
        )
        self.update_every = code_update_every(config, batcher.steps_per_epoch)
        self.optimizer = build.build_optimizer(config, params, self.total_steps)
        self.settings = StepSettings.from_config(config, mesh=mesh)
        if config.loss.similarity_form == "likelihood" and num_train >= LIKELIHOOD_WARN_ROWS:
            logging.warning(
                "config.loss.similarity_form='likelihood' has no low-rank form: every step "
                "reads S(idx, :) and the whole code bank, [%d, %d] arrays, O(B N) time. The "
                "'mse' form's step does not grow with N.",
                config.train.global_batch_size, num_train,
            )
        self.sim = self._similarity(data.labels[data.splits.train])
        self._num_train = num_train
        self._step_fn = None
        self._update_fn = None
        self._encode_fn = make_encode_fn(self.graphdef, self.settings)

    def _similarity(self, train_labels):
        config = self.config
        ks = tuple(config.loss.cluster_ks)
        if any(k > len(train_labels) for k in ks):
            raise cfg.ConfigError(
                f"config.loss.cluster_ks={ks} has a k larger than the {len(train_labels)} "
                "training rows; lower cluster_ks"
            )
        sim = similarity_lib.build_joint_similarity(
            train_labels,
            cluster_ks=ks,
            cluster_weights=tuple(config.loss.cluster_weights) or None,
            eta=config.loss.eta,
            key=jax.random.PRNGKey(config.seed + 7),
            kmeans_iters=config.loss.kmeans_iters,
        )
        return pad_similarity_for(sim, self.mesh)

    def _tower_weights(self, mesh=None):
        """The pretrained towers' weights, the state-creating jit's arguments (end to end
        only: in frozen mode the towers only gave the features); replicated on ``mesh``."""
        if self.towers is None or not self.end_to_end:
            return None
        weights = (self.towers.vision_state(), self.towers.text_state(),
                   jnp.asarray(self.towers.logit_scale, jnp.float32))
        return weights if mesh is None else parallel.put_replicated(weights, mesh)

    def _make_model(self, tower_weights):
        towers = None if tower_weights is None else _TracedTowers(self.towers, *tower_weights)
        return self._build_model(towers=towers)

    def _make_params(self, tower_weights):
        return nnx.split(self._make_model(tower_weights))[1]

    def describe(self) -> str:
        return f"FJSPH, {self.bits} bits, {self.config.train.mode}"

    def init_state(self) -> TrainState:
        state = create_train_state(self.config, self._make_params,
                                   (self._tower_weights(self.mesh),), self.optimizer,
                                   self._num_train, self.mesh, self.sim)
        shardings = state_shardings(state, self.mesh)
        self._step_fn = make_train_step(self.graphdef, self.optimizer, self.settings, shardings,
                                        parallel.replicated(self.mesh))
        codes = self.config.codes
        self._update_fn = jax.jit(
            lambda bank, sim: code_update_and_statistics(
                bank, sim,
                similarity_weight=codes.similarity_weight,
                quantization_weight=codes.quantization_weight,
                num_sweeps=codes.num_sweeps,
                floor=self.config.loss.similarity_floor,
            ),
            donate_argnums=(0,),
            out_shardings=(shardings.bank, shardings.bank_stats),
        )
        return state

    def before_step(self, state: TrainState, step: int) -> TrainState:
        if step > 0 and step % self.update_every == 0:
            bank, bank_stats = self._update_fn(state.bank, self.sim)
            state = state._replace(bank=bank, bank_stats=bank_stats)
        return state

    def train_step(self, state: TrainState, batch: dict, step: int):
        bank_active = jnp.float32(step >= self.update_every)
        return self._step_fn(state, batch, self.sim, bank_active)

    def encode(self, state: TrainState, rows: np.ndarray, *, role: str) -> dict:
        del role  # queries and database items are coded by the same heads
        image, text = encode_rows(self._encode_fn, state.params, self.data.load_rows, rows,
                                  batch_size=self.config.eval.batch_size, mesh=self.mesh)
        return {"image": image, "text": text}

