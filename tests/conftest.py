"""Test session set-up: eight simulated CPU devices, set before JAX initialises."""
import os
import tempfile
import sys

# Tests are dominated by XLA compilation, not execution: compile fast, and share the
# compilation cache between the runs that one test session makes of the same step.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("FJSPH_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "fjsph-jax-test-xla")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# `tiny` is tests/tiny.py (the test helpers). configs/tiny.py has the same module name and
# config files put configs/ first on sys.path when loaded: import the helpers now, before
# any config file is, so that every `from tiny import ...` gets them.
import tiny  # noqa: E402,F401
