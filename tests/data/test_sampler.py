"""The chunk sampler on a hand-made dataset with known episode boundaries, rewards and masks."""

import jax
import numpy as np
import pytest

from lps.data.sampler import chunk_starts, sample_chunks, to_device

H, GAMMA = 3, 0.5


def hand_dataset():
    # Two episodes: rows 0..5 (6 rows, last is the final observation) and rows 6..9 (4 rows).
    n = 10
    terminals = np.zeros(n, bool)
    terminals[[5, 9]] = True
    return {
        "observations": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32),
        "actions": (np.arange(n, dtype=np.float32)[:, None] / 10 + np.array([0.0, 0.01], np.float32)),
        "rewards": np.arange(n, dtype=np.float32) * 10,
        "masks": np.array([1, 1, 1, 0, 1, 1, 1, 1, 1, 1], np.float32),
        "terminals": terminals,
    }


def test_chunk_starts_never_cross_episode_boundaries():
    # Episode 1: a chunk of 3 starting at t needs row t+3 (the next observation) in the episode: t <= 2.
    # Episode 2 (rows 6..9): t <= 6.
    assert chunk_starts(hand_dataset()["terminals"], H).tolist() == [0, 1, 2, 6]
    assert chunk_starts(hand_dataset()["terminals"], 5).tolist() == [0]
    assert chunk_starts(hand_dataset()["terminals"], 6).tolist() == []


def test_sampled_chunks_match_hand_computation():
    data = to_device(hand_dataset(), H)
    batch = jax.device_get(sample_chunks(data, jax.random.PRNGKey(0), 512, H, GAMMA))
    starts = batch["observations"][:, 0].astype(int)
    assert set(starts.tolist()) == {0, 1, 2, 6}  # every valid start is drawn, no other
    for i, t in enumerate(starts):
        expected_actions = np.concatenate([np.array([k / 10, k / 10 + 0.01]) for k in range(t, t + H)])
        np.testing.assert_allclose(batch["actions"][i], expected_actions, rtol=1e-6)
        np.testing.assert_allclose(batch["chunk_return"][i], sum(GAMMA**k * 10 * (t + k) for k in range(H)))
        assert batch["chunk_mask"][i] == (0.0 if 3 in range(t, t + H) else 1.0)  # row 3 has mask 0
        assert batch["next_observations"][i, 0] == t + H


def test_sampling_is_jittable_and_seeded():
    data = to_device(hand_dataset(), H)
    f = jax.jit(sample_chunks, static_argnums=(2, 3, 4))
    a = f(data, jax.random.PRNGKey(3), 16, H, GAMMA)
    b = f(data, jax.random.PRNGKey(3), 16, H, GAMMA)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("h", [1, 2, 5])
def test_chunk_starts_count(h):
    terminals = np.zeros(100, bool)
    terminals[[9, 49, 99]] = True  # episodes of 10, 40, 50 rows -> 9, 39, 49 transitions
    assert len(chunk_starts(terminals, h)) == (9 - h + 1) + (39 - h + 1) + (49 - h + 1)
