"""The health check on a machine with GPUs: each one allocates, multiplies and matches the CPU."""

from __future__ import annotations

import pytest

from tasks.training import health_check

pytestmark = pytest.mark.gpu


def test_every_visible_gpu_is_usable(ff_home):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    n = torch.cuda.device_count()
    report = health_check(min_free_gb=0.001, gpus=n)
    assert [g["index"] for g in report["gpus"]] == list(range(n))
    for g in report["gpus"]:
        assert g["name"] and g["total_gb"] > 0 and 0 <= g["matmul_max_error"] < 0.05
    assert report["torch"]["cuda"]
