"""Shared fixtures of the op tests.

``impl`` runs a test once against the compiled kernels (``torch.ops.seqedit``) and once against
the pure-PyTorch reference, calling both with the raw op signatures; the CUDA test classes use
``cuda_impl`` in the same way.
"""

import pytest
import torch

from seqedit import ops, reference

HAS_EXT = ops.backends()["extension"]
HAS_CUDA_EXT = ops.backends()["cuda"]


@pytest.fixture(
    params=[
        pytest.param("ext", marks=pytest.mark.skipif(not HAS_EXT, reason="extension not built")),
        "ref",
    ]
)
def impl(request):
    return torch.ops.seqedit if request.param == "ext" else reference


@pytest.fixture(
    params=[
        pytest.param(
            "ext", marks=pytest.mark.skipif(not HAS_CUDA_EXT, reason="extension built without CUDA")
        ),
        "ref",
    ]
)
def cuda_impl(request):
    return torch.ops.seqedit if request.param == "ext" else reference
