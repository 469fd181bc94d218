"""IMPALA encoders (`lps.nets.encoders`) and random-shift augmentation (`lps.nets.augment`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lps.nets.augment import augment_pair, random_shift, shift_offsets
from lps.nets.encoders import ObservationEncoder


def test_random_shift_is_a_shifted_window_of_the_edge_padded_image():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (6, 12, 12, 3)), jnp.uint8)
    offsets = shift_offsets(jax.random.PRNGKey(0), 6, 2)
    assert random_shift(images, offsets, 0) is images
    shifted = random_shift(images, offsets, 2)
    assert shifted.shape == images.shape and shifted.dtype == jnp.uint8
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    for img, pad, (i, j) in zip(np.asarray(shifted), padded, np.asarray(offsets)):  # the window at its offset
        np.testing.assert_array_equal(img, pad[i : i + 12, j : j + 12])
    assert not np.array_equal(shifted, images)


def test_observation_and_next_observation_share_the_shift_and_the_whole_batch_is_shifted_or_not():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 255, (5, 12, 12, 6)), jnp.uint8)
    obs = {"state": jnp.ones((5, 2)), "image": images}
    outcomes = set()
    for seed in range(12):
        shifted, next_shifted = augment_pair(jax.random.PRNGKey(seed), obs, obs, 3, 0.5)
        # same input, same per-sample offset: identical outputs (a different draw would differ)
        np.testing.assert_array_equal(shifted["image"], next_shifted["image"])
        np.testing.assert_array_equal(shifted["state"], obs["state"])
        always = augment_pair(jax.random.PRNGKey(seed), obs, obs, 3, 1.0)[0]["image"]  # the same offsets
        assert not np.array_equal(always, images)
        # the batch as a whole is shifted or left alone, not sample by sample
        unchanged = np.array_equal(shifted["image"], images)
        assert unchanged or np.array_equal(shifted["image"], always)
        outcomes.add(unchanged)
    assert outcomes == {True, False}, "p_aug 0.5 should both shift and not shift over 12 draws"
    always, _ = augment_pair(jax.random.PRNGKey(0), images, images, 3, 1.0)
    assert not np.array_equal(always, images)
    assert augment_pair(jax.random.PRNGKey(0), images, images, 3, 0.0)[0] is images


def test_impala_head_is_dense_gelu_without_layer_norm_and_each_camera_has_its_own():
    enc = ObservationEncoder("impala-small", 8)
    obs = {"state": jnp.ones((2, 3)), "image": jnp.zeros((2, 16, 16, 9), jnp.uint8)}
    params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), obs)["params"]
    assert sorted(params) == ["camera0", "camera1", "camera2"]
    assert not any("LayerNorm" in str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    assert jax.eval_shape(enc.apply, {"params": params}, obs).shape == (2, 3 * 8 + 3)
    # a camera's features depend on its own channels only
    real = enc.init(jax.random.PRNGKey(0), obs)
    image = np.zeros((2, 16, 16, 9), np.uint8)
    image[..., 6:] = 200
    a = enc.apply(real, obs)
    b = enc.apply(real, {**obs, "image": jnp.asarray(image)})
    np.testing.assert_allclose(a[:, :16], b[:, :16])
    assert not np.allclose(a[:, 16:24], b[:, 16:24])


@pytest.mark.parametrize(
    "obs, dim",
    [
        ({"state": jnp.ones((2, 7)), "image": jnp.zeros((2, 16, 16, 6), jnp.uint8)}, 2 * 24 + 7),  # two cameras
        (jnp.zeros((2, 16, 16, 3), jnp.uint8), 24),
        (jnp.ones((2, 5)), 5),
    ],
)
def test_observation_encoder_shapes(obs, dim):
    enc = ObservationEncoder("impala-small", 24)
    out = jax.eval_shape(lambda o: enc.apply(enc.init(jax.random.PRNGKey(0), o), o), obs)
    assert out.shape == (2, dim) and out.dtype == jnp.float32
