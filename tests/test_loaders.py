"""Row loaders: in-memory gathers and ordered, threaded prefetching."""

import threading
import time

import numpy as np
import pytest

from fjsph_jax.data.loaders import ArrayRows, as_row_loader, prefetched


def test_array_rows_gathers_every_array_by_row():
    arrays = {"x": np.arange(12).reshape(6, 2), "y": np.arange(6) * 10}
    load = ArrayRows(arrays)
    assert len(load) == 6
    batch = load(np.array([5, 0, 5]))
    np.testing.assert_array_equal(batch["x"], [[10, 11], [0, 1], [10, 11]])
    np.testing.assert_array_equal(batch["y"], [50, 0, 50])


def test_array_rows_rejects_arrays_of_different_lengths():
    with pytest.raises(ValueError, match=r"disagree on their number of rows.*'a': 3.*'b': 4"):
        ArrayRows({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="at least one array"):
        ArrayRows({})


def test_as_row_loader_wraps_mappings_and_keeps_callables():
    assert isinstance(as_row_loader({"a": np.zeros(2)}), ArrayRows)

    def load(rows):
        return {"rows": rows}

    assert as_row_loader(load) is load
    with pytest.raises(TypeError, match="row loader"):
        as_row_loader(42)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetched_keeps_order_and_loads_ahead(depth):
    started = []
    threads = set()

    def load(rows):
        started.append(int(rows[0]))
        threads.add(threading.get_ident())
        time.sleep(0.01 * (5 - int(rows[0]) % 5))  # later batches finish first
        return {"rows": rows}

    batches = [np.array([i, i]) for i in range(7)]
    out = list(prefetched(load, batches, depth=depth))
    assert [int(b["rows"][0]) for b in out] == list(range(7))
    if depth == 0:
        assert threads == {threading.get_ident()}
    else:
        assert threading.get_ident() not in threads


def test_prefetched_reraises_a_loader_error():
    def load(rows):
        if rows[0] == 2:
            raise OSError("image 2 unreadable")
        return {"rows": rows}

    with pytest.raises(OSError, match="image 2 unreadable"):
        list(prefetched(load, [np.array([i]) for i in range(4)], depth=2))
