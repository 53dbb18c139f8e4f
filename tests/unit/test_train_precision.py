"""train.precision: the per-device choice and the autocast context of training and inference."""
import pytest
import torch

from cellmamba.errors import InputError
from cellmamba.train.precision import autocast, resolve_precision


def test_autocast_applies_the_resolved_precision():
    cpu = torch.device("cpu")
    a, b = torch.ones(2, 3), torch.ones(3, 2)
    with autocast(cpu, resolve_precision("auto", cpu)):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):  # the context itself honours bf16 wherever torch.autocast does
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(InputError, match="CUDA"):
        resolve_precision("bf16", cpu)
