"""Tensor digests are stored (ledger base fingerprints, stats cache keys and checksums): they must
never change. The expected values below were computed by the code before the hashing was shared
(`seqedit._tensor_hash`); a failure here means existing ledgers and caches would be rejected."""
from __future__ import annotations

import hashlib

import pytest
import torch

from seqedit.session.hashing import tensor_fingerprint
from seqedit.stats.cache import _tensor_digest, file_checksum


def _tensors():
    a = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    return {
        "a": a,
        "b": torch.arange(6, dtype=torch.int64).reshape(2, 3) - 2,
        "c": (torch.arange(8, dtype=torch.float32) / 3).to(torch.bfloat16),
        "e": torch.zeros(0, 5, dtype=torch.float64),
        "t": a.t(),  # not contiguous: its logical (row-major) order is what is hashed
    }


@pytest.mark.parametrize("name, expected", [
    ("a", "72b77df4a05c9bdfcbb40af65202186ea0a4f82bffaf36c30feea0323987a137"),
    ("b", "f974fe0b02bd8e978fc34ea66031a2b731c1c4aca7fb9c86a22487de943cea68"),
    ("c", "86b951e95cb12f6654daab862e67973d041a152d0e303c388ee2292bfb9bf7e1"),
    ("e", "1f886360f522a3e8428e3d64aa6ff4131bbe146640bc02b4b9fdd1b2e825ffc7"),
    ("t", "1b1de6d29e5bff7ee674226e90ea3719041baf08141c5e92bc9c8bfc383f458b"),
])
def test_session_fingerprint_is_pinned(name, expected):
    assert tensor_fingerprint(_tensors()[name])["sha256"] == expected


def test_stats_weight_digest_is_pinned():
    assert _tensor_digest(list(_tensors().items())) == (
        "104f03c684b70d7da3a5ecbfeb611c4a4114600aebf4b88dc711024d8c6eb7f5")
    assert _tensor_digest([]) == hashlib.sha256().hexdigest()


def test_stats_file_checksum_is_pinned():
    tensors = _tensors()
    tensors = {"z": tensors["a"], "b": tensors["b"], "c": tensors["c"],
               "t": tensors["t"].contiguous(), "e": tensors["e"]}
    assert file_checksum(tensors, "key-1") == (
        "88880ed6397371b01e93e3cd8e6fd7462242529fe2defe06e22cb5214cdbc9c7")


def test_meta_tensors_are_refused():
    with pytest.raises(ValueError, match="meta device"):
        _tensor_digest([("w", torch.empty(2, 2, device="meta"))])
