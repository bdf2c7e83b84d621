"""The FJSPH training step: one jitted function over the device mesh.

For a global batch of B training pairs with training-set rows ``idx`` [B]:

    f_img, f_txt = image_tower(x, FLIP mask), text_tower(t)          [B, D]
                   (frozen mode: the batch's feature vectors)
    e_img, e_txt = embeddings the heads read (frozen mode: trainable projections of f)
    u, v         = tanh-hash heads of e_img, e_txt                   [B, K]
    z            = fused hash of (e_img, e_txt) (interaction block)  [B, K] (optional)
    S_pair       = S(idx, idx)       [B, B]   joint label similarity within the batch
    B            = unified code bank [N, K]   in {-1, +1}
    T            = floor + (1 - floor) S      the target of code inner products / K

    L = w_con   InfoNCE(e_img, e_txt; learnable temperature)
      + w_sim   sim(u, v; S_pair)
      + a w_bank (sim(u, B; S(idx, :)) + sim(v, B; S(idx, :))) / 2
      + a w_q   (||u - B_idx||^2 + ||v - B_idx||^2) / 2
      + w_bal   (balance(u) + balance(v)) / 2
      + w_fused (sim(z, z; S_pair) + a ||z - B_idx||^2)

``sim`` is :func:`objectives.similarity_mse` or :func:`objectives.similarity_likelihood`
(``config.loss.similarity_form``); ``a`` (``bank_active``) is 0 until the first discrete
code update has replaced the random initial bank, then 1.

Cost of the bank term. With the mse form it is computed from cached low-rank statistics
(:class:`~.code_bank.BankStatistics` in ``TrainState.bank_stats``: ``N_hat^T B``,
``C_j^T B``, ``B^T B``, ``1^T B`` and the S-only ``N_hat^T N_hat``, cluster sizes,
contingency tables), recomputed whenever B changes (the code update): the step costs
O(B K (C + m) + B K^2 + B (C^2 + m C + m^2)), independent of N, and builds nothing of
size N (:func:`objectives.bank_similarity_mse` has the identity). The likelihood form
has no such identity (softplus of each inner product): it reads ``S(idx, :)`` [B, N]
and the whole bank, O(B N (K + C + m)) per step (:func:`objectives.bank_similarity_dense`).

The contrastive term runs under ``shard_map`` when the settings carry the mesh: each
device holds its B/d rows of the [B, B] logits (:func:`objectives.symmetric_infonce_sharded`).

After the gradient step the batch's continuous outputs ``u, v`` are written into the
bank's ``F, G`` rows; every ``update_every`` steps :func:`code_update` recomputes ``B``
by discrete cyclic coordinate descent (``codes.discrete_code_step``) and the method
recomputes ``bank_stats``.

Training-set arrays may be padded along N to a multiple of the device count (the bank,
and the similarity, which then records its real item count): padding rows are never
read by the step (``idx`` < N) and are masked out of the statistics and the code update.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fjsph_jax.methods.fjsph import code_bank as bank_lib
from fjsph_jax import parallel, similarity
from fjsph_jax.methods.fjsph import objectives
from fjsph_jax.data.preprocess import normalize_images


class TrainState(NamedTuple):
    """Everything a resumed run needs (a pytree; saved whole by orbax)."""

    params: Any  # nnx.State of the model's Params: replicated, or split over 'fsdp'
    opt_state: Any  # optax state, sharded like the params
    bank: bank_lib.CodeBank  # B, F, G: [N, K] rows sharded over 'data' (N padded)
    step: jax.Array  # int32 scalar: completed steps (= the data position)
    rng: jax.Array  # uint32 [2] base key; step keys are fold_in(rng, step)
    # Statistics of bank.codes under the run's similarity (replicated, small), recomputed
    # with every code update; None: the step computes them itself (O(N) per step).
    bank_stats: bank_lib.BankStatistics | None = None


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """Static hyper-parameters of the step (hashable: part of the jit cache key)."""

    end_to_end: bool
    mask_ratio: float
    image_mean: tuple
    image_std: tuple
    similarity_form: str
    similarity_floor: float
    likelihood_scale: float
    contrastive_weight: float
    similarity_weight: float
    bank_similarity_weight: float
    quantization_weight: float
    balance_weight: float
    fused_weight: float
    # The device mesh: the contrastive term then runs under shard_map over its batch
    # axes ('data', and 'fsdp' if it has one). None: the plain [B, B] formula (XLA
    # partitions it as it likes).
    mesh: Any = None
    # Reference / benchmark only: the bank and in-batch similarity terms the direct way,
    # from S(idx, :) [B, N] (the step before the low-rank path; O(B N) per step).
    dense_bank_terms: bool = False

    @classmethod
    def from_config(cls, config, mesh=None) -> "StepSettings":
        loss = config.loss
        return cls(
            end_to_end=config.train.mode == "end_to_end",
            mask_ratio=float(config.model.mask_ratio),
            image_mean=tuple(config.data.image_mean),
            image_std=tuple(config.data.image_std),
            similarity_form=loss.similarity_form,
            similarity_floor=float(loss.similarity_floor),
            likelihood_scale=float(loss.likelihood_scale),
            contrastive_weight=float(loss.contrastive_weight),
            similarity_weight=float(loss.similarity_weight),
            bank_similarity_weight=float(loss.bank_similarity_weight),
            quantization_weight=float(loss.quantization_weight),
            balance_weight=float(loss.balance_weight),
            fused_weight=float(loss.fused_weight),
            mesh=mesh,
        )

    def similarity_loss(self, h_a, h_b, s_ab):
        if self.similarity_form == "likelihood":
            return objectives.similarity_likelihood(h_a, h_b, s_ab, scale=self.likelihood_scale)
        return objectives.similarity_mse(h_a, h_b, s_ab, floor=self.similarity_floor)

    def contrastive_loss(self, e_img, e_txt, log_logit_scale):
        if self.mesh is None:
            return objectives.symmetric_infonce(e_img, e_txt, log_logit_scale)
        return objectives.symmetric_infonce_sharded(e_img, e_txt, log_logit_scale,
                                                    mesh=self.mesh,
                                                    axis_name=parallel.batch_axis_name(self.mesh))


def tower_features(model, batch: dict, settings: StepSettings, mask_key, *, train: bool):
    """Encoder features ``[B, D]`` of both modalities (cached features in frozen mode)."""
    if not settings.end_to_end:
        return batch["image_features"], batch["text_features"]
    pixels = normalize_images(batch["images"], settings.image_mean, settings.image_std)
    mask_ratio = settings.mask_ratio if train else 0.0
    image = model.image_features(pixels, mask_ratio=mask_ratio, mask_key=mask_key)
    text = model.text_features(batch["input_ids"], batch["attention_mask"])
    return image, text


def loss_terms(
    model,
    batch: dict,
    bank: bank_lib.CodeBank,
    sim: similarity.JointSimilarity,
    bank_active,
    settings: StepSettings,
    mask_key,
    bank_stats: bank_lib.BankStatistics | None = None,
):
    """All loss terms (dict of scalars) plus the batch's hash outputs ``u, v`` [B, K].

    ``bank_stats`` must be ``bank_statistics(bank.codes, sim)`` (the cached statistics);
    None computes them here (same values, O(N) per call).
    """
    if bank.codes.shape[0] != sim.num_items:
        raise ValueError(
            f"the bank has {bank.codes.shape[0]} rows but the similarity {sim.num_items}: "
            "pad both to the same multiple of the device count (method.pad_similarity_for)")
    idx = batch["index"]
    f_img, f_txt = tower_features(model, batch, settings, mask_key, train=True)
    e_img, e_txt = model.embed_image(f_img), model.embed_text(f_txt)
    u = model.image_hash(e_img)
    v = model.text_hash(e_txt)
    z = model.fuse(e_img, e_txt)

    batch_codes = jnp.take(bank.codes, idx, axis=0).astype(jnp.float32)  # [B, K]
    if settings.dense_bank_terms or settings.similarity_form == "likelihood":
        s_pair, bank_similarity = _dense_similarity_terms(u, v, bank, sim, idx, settings)
    else:
        factors, ids = similarity.item_factors(sim, idx)
        s_pair = similarity.pairwise_similarity(factors, ids, factors, ids,
                                                sim.cluster_weights, sim.eta)  # [B, B]
        bank_similarity = _low_rank_bank_similarity(u, v, bank, sim, idx, settings,
                                                    bank_stats)

    terms = {
        "contrastive": settings.contrastive_loss(e_img, e_txt, model.logit_scale[...]),
        "similarity": settings.similarity_loss(u, v, s_pair),
        "bank_similarity": bank_similarity,
        "quantization": 0.5
        * (
            objectives.quantization_loss(u, batch_codes)
            + objectives.quantization_loss(v, batch_codes)
        ),
        "balance": 0.5 * (objectives.bit_balance_loss(u) + objectives.bit_balance_loss(v)),
    }
    if z is not None:
        terms["fused"] = settings.similarity_loss(
            z, z, s_pair
        ) + bank_active * objectives.quantization_loss(z, batch_codes)
    return terms, u, v


def _low_rank_bank_similarity(u, v, bank, sim, idx, settings, bank_stats):
    """The mse bank term ``(mse(u, B; S(idx, :)) + mse(v, B; S(idx, :))) / 2`` from the
    cached statistics: no [B, N] array, cost independent of N."""
    if bank_stats is None:
        bank_stats = bank_lib.bank_statistics(bank.codes, sim)
    floor = settings.similarity_floor
    target_codes = similarity.apply_target_rows(sim, bank_stats.projections, idx, floor=floor)
    target_squares = similarity.target_row_squared_norms(sim, bank_stats.target, idx,
                                                         floor=floor)

    def bank_mse(h):
        return objectives.bank_similarity_mse(h, target_codes, target_squares,
                                              bank_stats.code_gram, sim.num_valid)

    return 0.5 * (bank_mse(u) + bank_mse(v))


def _dense_similarity_terms(u, v, bank, sim, idx, settings):
    """``(S_pair [B, B], bank term)`` from the rows ``S(idx, :)`` [B, N]: the likelihood
    form's path (it has no low-rank identity) and the reference path of the mse form."""
    s_bank = similarity.similarity_rows_for_indices(sim, idx)  # [B, N]
    s_pair = jnp.take(s_bank, idx, axis=1)  # [B, B]
    valid = similarity.row_mask(sim)
    kwargs = dict(form=settings.similarity_form, floor=settings.similarity_floor,
                  scale=settings.likelihood_scale, valid_n=valid)
    bank_codes = bank.codes.astype(jnp.float32)
    bank_similarity = 0.5 * (objectives.bank_similarity_dense(u, bank_codes, s_bank, **kwargs)
                             + objectives.bank_similarity_dense(v, bank_codes, s_bank, **kwargs))
    return s_pair, bank_similarity


def total_loss(terms: dict, bank_active, settings: StepSettings):
    total = (
        settings.contrastive_weight * terms["contrastive"]
        + settings.similarity_weight * terms["similarity"]
        + bank_active * settings.bank_similarity_weight * terms["bank_similarity"]
        + bank_active * settings.quantization_weight * terms["quantization"]
        + settings.balance_weight * terms["balance"]
    )
    if "fused" in terms:
        total = total + settings.fused_weight * terms["fused"]
    return total


def train_step(
    state: TrainState,
    batch: dict,
    sim: similarity.JointSimilarity,
    bank_active,
    *,
    graphdef,
    optimizer: optax.GradientTransformation,
    settings: StepSettings,
) -> tuple[TrainState, dict]:
    """One optimisation step on a global batch; returns the new state and scalar metrics.

    Pure: jit it with ``graphdef``, ``optimizer`` and ``settings`` static (see
    :func:`make_train_step`). ``bank_active`` is a float32 scalar (0. or 1.).
    """
    mask_key = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        terms, u, v = loss_terms(model, batch, state.bank, sim, bank_active, settings, mask_key,
                                 state.bank_stats)
        temperature = jnp.exp(-model.logit_scale[...])
        return total_loss(terms, bank_active, settings), (terms, u, v, temperature)

    (loss, (terms, u, v, temperature)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    bank = bank_lib.update_outputs(
        state.bank, batch["index"], jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    )
    metrics = {
        "loss": loss,
        **terms,
        "grad_norm": optax.tree.norm(grads),
        "temperature": temperature,
    }
    new_state = TrainState(
        params=params, opt_state=opt_state, bank=bank, step=state.step + 1, rng=state.rng,
        bank_stats=state.bank_stats,
    )
    return new_state, metrics


def make_train_step(graphdef, optimizer, settings: StepSettings, state_shardings, replicated):
    """``jax.jit`` of :func:`train_step` with the state donated and its shardings kept."""

    def step(state, batch, sim, bank_active):
        return train_step(
            state,
            batch,
            sim,
            bank_active,
            graphdef=graphdef,
            optimizer=optimizer,
            settings=settings,
        )

    return jax.jit(step, donate_argnums=(0,), out_shardings=(state_shardings, replicated))


def code_update(
    bank: bank_lib.CodeBank,
    sim: similarity.JointSimilarity,
    *,
    similarity_weight: float,
    quantization_weight: float,
    num_sweeps: int,
    floor: float,
) -> bank_lib.CodeBank:
    """B <- discrete DCC step of the joint objective on the current F, G banks."""
    new_codes = bank_lib.discrete_code_step(
        bank,
        sim,
        similarity_weight=similarity_weight,
        quantization_weight=quantization_weight,
        num_sweeps=num_sweeps,
        floor=floor,
    )
    return bank._replace(codes=new_codes)


def code_update_and_statistics(
    bank: bank_lib.CodeBank,
    sim: similarity.JointSimilarity,
    **kwargs,
) -> tuple[bank_lib.CodeBank, bank_lib.BankStatistics]:
    """:func:`code_update` and the new codes' :class:`~.code_bank.BankStatistics` (what
    ``TrainState.bank_stats`` must hold after B changed). ``kwargs``: those of
    :func:`code_update`."""
    bank = code_update(bank, sim, **kwargs)
    return bank, bank_lib.bank_statistics(bank.codes, sim)
