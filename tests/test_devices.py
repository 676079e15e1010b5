"""One device rule for training, evaluation and prediction."""

from __future__ import annotations

import pytest
import torch

from bloodcell import ConfigError
from bloodcell.networks.devices import resolve_device


@pytest.mark.parametrize("spec", [None, "", "auto", " AUTO "])
def test_auto_is_cuda_when_available_else_cpu(spec):
    assert resolve_device(spec).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_and_torch_devices_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(("spec", "message"), [("gpu0", "not a torch device"), ("meta", "not supported")])
def test_bad_devices_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        resolve_device("cuda:0")
