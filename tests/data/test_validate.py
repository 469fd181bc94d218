"""lps.data.validate: a dataset in the row layout is checked before training; masks and
terminals hold what the critic's target needs."""

from __future__ import annotations

import numpy as np
import pytest

from lps.data.validate import DatasetError, load_own_dataset, validate

CHUNK_LEN = 3


def rows(length: int, seed: int = 0) -> dict:
    """One episode of `length` rows in the row layout (6-D states, 2-D actions)."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(length, bool)
    terminals[-1] = True
    return {
        "observations": rng.normal(size=(length, 6)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
        "rewards": -rng.integers(0, 2, length).astype(np.float32),
        "masks": np.ones(length, np.float32),
        "terminals": terminals,
    }


@pytest.mark.parametrize("masks, shown", [(3.0, "3"), (-1.0, "-1"), (np.nan, "nan"), (np.int64(-1), "-1")])
def test_masks_outside_zero_one_are_refused_naming_file_row_and_meaning(tmp_path, masks, shown):
    data = rows(10)
    data["masks"] = np.ones(10, np.asarray(masks).dtype)
    data["masks"][7] = masks  # they multiply over a chunk: 3 would weigh its bootstrap by 3^H
    np.savez(tmp_path / "mine.npz", **data)
    with pytest.raises(DatasetError, match=rf"mine.npz: 'masks' must lie in \[0, 1\] \(1 = bootstrap.*0 = stop.*"
                                           rf"row 7 holds {shown} \(1 such rows\)"):  # fmt: skip
        load_own_dataset(tmp_path / "mine.npz", CHUNK_LEN)
    data["masks"][7] = 0  # 0/1 (or a weight between) is fine
    assert validate(data, CHUNK_LEN)["masks"][7] == 0.0
    data["terminals"] = np.where(np.arange(10) == 2, -1, data["terminals"])
    with pytest.raises(DatasetError, match=r"'terminals' must be 0 or 1 .* row 2 holds"):
        validate(data, CHUNK_LEN)
