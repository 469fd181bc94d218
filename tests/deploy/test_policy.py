"""Where a loaded policy acts: auto picks the host CPU (fastest for one observation)."""

import jax
import pytest

from lps.deploy.policy import acting_device


def test_acting_device_choices():
    assert acting_device("auto").platform == "cpu"
    assert acting_device("cpu").platform == "cpu"
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'gpu'"):
        acting_device("tpu0")
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(RuntimeError, match="no GPU"):
            acting_device("gpu")
