"""Rehearsal only (benchmarks/gpu_train_benchmark.sh, REHEARSE_ON_CPU=1): makes grain,
tensorflow, tensorflow_datasets and faiss look absent, as they are on the device machine; with
REHEARSE_NO_ML_COLLECTIONS=1 also ml_collections, unless it was installed under /tmp/site
(the script's wheel path)."""
import os
import sys
from importlib.machinery import PathFinder

BLOCKED = ("grain", "tensorflow_datasets", "tensorflow", "faiss")


class _AbsentFinder(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED:
            return None
        spec = PathFinder.find_spec(name, path, target)
        if (top == "ml_collections" and os.environ.get("REHEARSE_NO_ML_COLLECTIONS") == "1" and spec
                and not str(spec.origin or next(iter(spec.submodule_search_locations or []), "")).startswith("/tmp/site")):
            return None
        return spec


sys.meta_path[:] = [_AbsentFinder if f is PathFinder else f for f in sys.meta_path]
