"""The shared loop through the method interface: a fake closed-form method with a known MAP,
and the same outputs for every method."""

import json

import numpy as np
import pytest

from fjsph_jax import methods, parallel
from fjsph_jax.methods.base import ClosedFormMethod
from fjsph_jax.training import loop
from tiny import LabelCodes, registered, tiny_config


class OracleMethod(LabelCodes, ClosedFormMethod):
    """Codes copied from the labels (bit c = +1 iff label c): every item is ranked by how
    many labels it shares, so relevant items come first whenever labels are single."""

    name = "oracle"
    title = "Oracle"
    fits = 0

    @classmethod
    def validate_config(cls, config, num_devices):
        pass

    def init_state(self):
        return {"scale": parallel.put_replicated(np.zeros((), np.float32), self.mesh)}

    def fit(self, state):
        OracleMethod.fits += 1
        return {"scale": state["scale"] + 1}, {"objective": 1.0}


@pytest.fixture
def oracle():
    yield from registered("oracle", OracleMethod)


def test_fake_method_gets_its_known_map_and_is_not_refitted(oracle, tmp_path):
    config = tiny_config(**{"method": "oracle", "data.features": "", "eval.top_k": 10})
    results = loop.train_and_evaluate(config, str(tmp_path))
    # Label codes give distance 0 to items with the same label set: a perfect ranking for
    # single-concept items; MAP is far above the random-codes level.
    assert results["i2t"]["map_all"] > results["random_codes"]["i2t"]["map_all"] + 0.2
    assert results["method"] == "oracle" and results["code_format"] == "pm1"
    assert results["map_convention"] == "top_k"  # the interface's default
    assert set(results["i2t"]["map_at_k_by_convention"]) == {"top_k", "dcmh"}
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["i2t"]["map_all"] == results["i2t"]["map_all"]
    for name in ("config.json", "metrics.jsonl", "pr_curve.png", "precision_at_n.png"):
        assert (tmp_path / name).exists(), name
    assert OracleMethod.fits == 1
    loop.train_and_evaluate(config, str(tmp_path))  # same workdir: restores the fit
    assert OracleMethod.fits == 1


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"config.method='dsph'.*'fjsph', 'jspsh', 'jdsh'"):
        methods.get("dsph")
