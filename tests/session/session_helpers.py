"""Session test helpers: requests, model hashes, a weight oracle, and a fake editor.

`FakeEditor` is a permanent fixture, not a stand-in: the session must work with any Editor, and
a deterministic one makes every expected weight computable by hand. Its delta for a request
depends only on the request's content (and the layer and seed), so an edit replayed, resumed or
applied in another session yields the same factors; it keeps AlphaEdit-like state (Σ kkᵀ of
committed keys) to check that commit/revert are replayed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from seqedit.data import EditRequest
from seqedit.editors.base import Delta, LayerDelta
from seqedit.session.hashing import request_key


@dataclass(frozen=True)
class FakeConfig:
    layers: tuple[int, ...] = (0, 1)
    scale: float = 0.05
    poison: tuple = ()  # case_ids whose factors get a NaN
    zero: tuple = ()  # case_ids whose factors are all zero
    use_stats: bool = False  # ask ctx for C of every layer, as MEMIT does


class FakeEditor:
    name = "fake"

    def __init__(self, spec, config: FakeConfig | None = None):
        self.spec = spec
        self.config = config or FakeConfig()
        self.state: dict[str, torch.Tensor] = {}
        self.computed = 0

    @property
    def layers(self):
        return sorted(self.config.layers)

    def compute(self, model, requests, ctx):
        self.computed += 1
        # Like MEMIT's context templates: derived from the model at the first edit, memoised.
        first = model.get_parameter(self.spec.mlp_out_weight_name(self.config.layers[0]))
        ctx.memo.setdefault(("fake_probe", ctx.seed), (f"{float(first.sum()):.8e}",))
        ctx.memo[("fake_tensor",)] = torch.zeros(1)  # not portable: never in the ledger
        layers, keys = [], {}
        for layer in self.config.layers:
            name = self.spec.mlp_out_weight_name(layer)
            shape = tuple(model.get_parameter(name).shape)
            d_out, d_in = shape[::-1] if self.spec.mlp_out_transposed else shape
            if self.config.use_stats:
                assert ctx.require_second_moment(layer).shape == (d_in, d_in)
            us, vs = [], []
            for req in requests:
                seed = int(request_key(req)[:8], 16) + 7919 * layer + ctx.seed
                gen = torch.Generator().manual_seed(seed)
                u = torch.randn(d_out, 1, generator=gen) * self.config.scale
                v = torch.randn(d_in, 1, generator=gen)
                if req.case_id in self.config.poison:
                    u[0, 0] = float("nan")
                if req.case_id in self.config.zero:
                    u.zero_()
                us.append(u)
                vs.append(v)
            u, v = torch.cat(us, 1), torch.cat(vs, 1)
            layers.append(LayerDelta(name, u, v, self.spec.mlp_out_transposed))
            keys[name] = v.T.contiguous()
        return Delta(self.name, layers, keys, {"requests": len(requests)})

    def commit(self, delta):
        for name, k in delta.keys.items():
            self.state[name] = self.state.get(name, 0) + k.double().T @ k.double()

    def revert(self, delta):
        for name, k in delta.keys.items():
            self.state[name] = self.state[name] - k.double().T @ k.double()


def make_requests(n: int, start: int = 0) -> list[EditRequest]:
    cities = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Oslo", "Lima", "Cairo"]
    return [EditRequest(prompt="The capital of {} is", subject=f"Country {i}",
                        target_new=cities[i % len(cities)],
                        target_true=cities[(i + 3) % len(cities)], case_id=i)
            for i in range(start, start + n)]


def model_hash(model) -> str:
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(memoryview(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def assert_models_close(a, b, *, rtol=1e-6, atol=1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def expected_weights(model, editor, requests_per_step):
    """Base weights plus the fake deltas of the given steps, in float64 (the oracle)."""
    out = {}
    for step in requests_per_step:
        delta = editor.compute(model, step, _Ctx())
        for d in delta.layers:
            dense = (d.u.double() @ d.v.double().T)
            dense = dense.T if d.transposed else dense
            out[d.name] = out.get(d.name, 0) + dense
    base = dict(model.named_parameters())
    return {name: base[name].detach().double() + dw for name, dw in out.items()}


class _Ctx:
    seed = 0

    def __init__(self):
        self.memo = {}

    def require_second_moment(self, layer):  # pragma: no cover - oracle runs without stats
        raise AssertionError
