"""fjsph-jax: cross-modal hashing (FJSPH, JSPSH, JDSH) in JAX and Flax NNX."""

__version__ = "0.1.0"
