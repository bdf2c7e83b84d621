"""JDSH: Joint-modal Distribution-based Similarity Hashing (Liu et al., SIGIR 2020).

Unsupervised deep cross-modal hashing on feature vectors: the target of each batch is the
joint-modal similarity of its image and text features reweighted by DSDW
(:func:`similarity_target`), the loss fits the codes' cosine similarities to it
(:func:`loss`). :mod:`.objective` has the formulas, :mod:`.model` the networks,
:mod:`.method` the method class of the shared loop (``config.method = "jdsh"``).
"""

from fjsph_jax.methods.jdsh.objective import fit_dsdw, loss, similarity_target

__all__ = ["fit_dsdw", "loss", "similarity_target"]
