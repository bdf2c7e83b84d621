"""A checkpoint written on 8 devices restores onto 4, with the 4-device shardings re-applied
(FJSPH's code bank rows [N, K] re-split over the new mesh, and its row padding adapted:
N = 60 rows are 64 on 8 devices, 60 on 4): the restore the loop does when a run resumes
with other devices (``Checkpointer.restore`` onto ``method.init_state()``)."""

import jax
import numpy as np

from fjsph_jax import parallel
from fjsph_jax.training import loop
from fjsph_jax.training.checkpointing import Checkpointer, config_fingerprint
from test_multiprocess import NUM_TRAIN, OVERRIDES, TOTAL_STEPS
from tiny import tiny_config


def test_checkpoint_of_eight_devices_restores_onto_four(tmp_path):
    config = tiny_config(**OVERRIDES)  # as tests/test_multiprocess.py: shares its programs
    half = TOTAL_STEPS // 2
    assert loop.train_and_evaluate(config, str(tmp_path), stop_after_steps=half) is None

    ckpt = Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=2, save_interval_steps=8)
    saved, _ = ckpt.restore_untyped(half)  # as written: on the 8 devices
    assert len(saved["bank"]["codes"].sharding.device_set) == 8

    devices = jax.devices()[:4]
    mesh = parallel.make_mesh(devices)
    method, _ = loop.build_method(config, str(tmp_path), mesh)
    target = method.init_state()
    restored, meta = ckpt.restore(target, fingerprint=config_fingerprint(config))
    ckpt.close()
    assert meta["step"] == half and int(restored.step) == half

    assert saved["bank"]["codes"].shape[0] == 64  # N = 60 padded for 8 devices
    for name in ("codes", "image_outputs", "text_outputs", "seen"):
        array = getattr(restored.bank, name)
        assert array.shape[0] == getattr(target.bank, name).shape[0], name
        assert array.sharding.device_set == set(devices), name
        assert array.sharding.spec[0] == "data", name
        assert {s.data.shape[0] for s in array.addressable_shards} == {array.shape[0] // 4}
        # The real rows come first on both meshes; only padding rows differ.
        np.testing.assert_array_equal(np.asarray(array)[:NUM_TRAIN],
                                      np.asarray(saved["bank"][name])[:NUM_TRAIN])
    flat_restored = jax.tree_util.tree_leaves_with_path(restored.params)
    flat_saved = jax.tree.leaves(saved["params"])
    assert len(flat_restored) == len(flat_saved) > 10
    for (path, a), b in zip(flat_restored, flat_saved):
        assert a.sharding.device_set == set(devices), jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for path, leaf in jax.tree_util.tree_leaves_with_path(restored):  # optimiser state too
        assert leaf.sharding.device_set == set(devices), jax.tree_util.keystr(path)
