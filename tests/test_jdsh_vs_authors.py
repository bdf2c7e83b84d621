"""JDSH here vs the authors' PyTorch code (github.com/KaiserLew/JDSH), when both are at hand.

Their code is never part of this repository: :mod:`benchmarks.jdsh_vs_authors` extracts it
at run time from the git mirror (``$JDSH_MIRROR`` or ``/work/.mirror/KaiserLew+JDSH``) into
a temporary directory. Skipped without torch or without the mirror (CI has neither; the
hand-computed values of tests/test_jdsh_objective.py are what CI checks).
"""

import tempfile

import pytest

torch = pytest.importorskip("torch")

from benchmarks import jdsh_vs_authors as parity  # noqa: E402

MIRROR = parity.find_mirror()
pytestmark = pytest.mark.skipif(MIRROR is None, reason="no git mirror of the authors' JDSH code")


@pytest.fixture(scope="module")
def authors():
    with tempfile.TemporaryDirectory(prefix="jdsh-authors-") as directory:
        parity.extract(MIRROR, directory)
        jdsh_class, configs = parity.load_authors(directory)
        yield directory, jdsh_class, configs


def test_the_stubs_are_gone_after_the_import(authors):
    import sys

    for name in ("datasets", "models", "args", "utils", "JDSH"):
        module = sys.modules.get(name)
        assert module is None or "jdsh-authors-" not in str(getattr(module, "__file__", ""))


@pytest.mark.parametrize("dataset", ["MIRFlickr", "NUSWIDE"])
@pytest.mark.parametrize("batch", [8, 32, 128])
def test_target_and_loss_match_the_authors(authors, dataset, batch):
    _, jdsh_class, configs = authors
    row = parity.compare(jdsh_class, configs[dataset], batch, seed=batch)
    assert row["left_fired"] > 0 and row["right_fired"] > 0, row  # both DSDW branches
    assert row["max_abs_dS"] < 1e-4, row
    assert row["abs_dloss"] < 1e-4 and row["abs_dloss_same_S"] < 1e-4, row
    assert row["max_abs_dgrad"] < 1e-4, row


def test_configs_hold_their_json_values(authors):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
    import jdsh_mirflickr
    import jdsh_nuswide

    from fjsph_jax.methods.jdsh import objective

    _, _, configs = authors
    for dataset, module in (("MIRFlickr", jdsh_mirflickr), ("NUSWIDE", jdsh_nuswide)):
        ours = module.get_config()
        assert {k: ours.jdsh[k] for k in objective.AUTHOR_KEYS} == objective.from_authors(
            configs[dataset])
        json_config = configs[dataset]
        assert ours.train.global_batch_size == json_config["BATCH_SIZE"]
        assert ours.train.num_epochs == json_config["NUM_EPOCH"]
        assert ours.train.learning_rate == json_config["LR_IMG"] == json_config["LR_TXT"]
        assert ours.train.momentum == json_config["MOMENTUM"]
        assert ours.train.weight_decay == json_config["WEIGHT_DECAY"]


@pytest.mark.parametrize("dataset", ["MIRFlickr", "NUSWIDE"])
def test_djsrh_split_is_their_datasets_py(authors, dataset, tmp_path):
    directory, _, _ = authors
    row = parity.compare_split(directory, dataset, 3, str(tmp_path), num_items=3000,
                               num_labels=5)
    assert row["identical"], row
