"""EpochBatcher: batches are a pure function of (seed, step)."""

import numpy as np
import pytest

from fjsph_jax.data.batches import EpochBatcher


def test_each_epoch_is_a_permutation_without_repeats():
    batcher = EpochBatcher(num_items=103, global_batch_size=10, seed=3)
    assert batcher.steps_per_epoch == 10
    epoch0 = np.concatenate([batcher.indices(s) for s in range(10)])
    assert len(np.unique(epoch0)) == 100 and epoch0.min() >= 0 and epoch0.max() < 103
    epoch1 = np.concatenate([batcher.indices(s) for s in range(10, 20)])
    assert not np.array_equal(epoch0, epoch1)


def test_indices_depend_only_on_seed_and_step():
    a = EpochBatcher(64, 8, seed=1)
    b = EpochBatcher(64, 8, seed=1)
    order = [17, 3, 9, 3, 40]
    for s in order:  # out-of-order access (a resumed run) gives the same batches
        np.testing.assert_array_equal(a.indices(s), EpochBatcher(64, 8, seed=1).indices(s))
    np.testing.assert_array_equal(a.indices(5), b.indices(5))
    assert not np.array_equal(a.indices(5), EpochBatcher(64, 8, seed=2).indices(5))


@pytest.mark.parametrize("batch", [0, 65])
def test_bad_batch_size(batch):
    with pytest.raises(ValueError, match="global_batch_size"):
        EpochBatcher(64, batch, seed=0)


def test_epoch_permutation_is_cached_read_only_and_thread_safe():
    import concurrent.futures

    from fjsph_jax.data.batches import epoch_permutation

    first = epoch_permutation(5, 2, 1000)
    assert epoch_permutation(5, 2, 1000) is first  # not redrawn for the next step
    np.testing.assert_array_equal(first, np.random.default_rng([5, 2]).permutation(1000))
    with pytest.raises(ValueError):
        first[0] = 1  # shared between callers: must not be modified
    batcher = EpochBatcher(1000, 10, seed=9)
    want = [batcher.indices(s).copy() for s in range(300)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(EpochBatcher(1000, 10, seed=9).indices, range(300)))
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
