"""Helpers shared by the editor tests: tiny models with key statistics, requests, weight hashing."""
from __future__ import annotations

import hashlib
import warnings

import torch

from seqedit.data import EditRequest
from seqedit.editors import EditContext
from seqedit.models import spec as model_spec
from seqedit.models import tiny

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Paris is the capital and most populous city of France, on the Seine.",
    "Water boils at one hundred degrees Celsius at sea level pressure.",
    "The violin is a wooden string instrument in the violin family.",
    "Tokyo is the capital of Japan and one of the largest cities on Earth.",
    "She plays the piano every evening after dinner with her brother.",
    "Mount Everest is the highest mountain above sea level in the Himalayas.",
    "The football club was founded in 1899 and plays in red and white.",
] * 6

REQUESTS = [
    EditRequest(prompt="{} lives in the city of", subject="Alice Smith", target_new="Paris", target_true="Rome"),
    EditRequest(prompt="The mother tongue of {} is", subject="Bob Jones", target_new="French", target_true="English"),
    EditRequest(prompt="{}, who plays the", subject="Carol", target_new="violin", target_true="piano"),
]


def key_second_moments(model, tokenizer, layers) -> dict[int, torch.Tensor]:
    """C = E[kkᵀ] per layer from seqedit.stats on a tiny corpus (float64, uncached)."""
    from seqedit.stats import second_moments

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "corpus shorter than max_tokens", "ops fallback": expected here
        out = second_moments(model, tokenizer, layers, corpus=CORPUS, max_tokens=3000, cache=False,
                             progress=False)
    return {layer: c for layer, (c, _) in out.items()}


class Tiny:
    """A tiny model with its spec, tokenizer and key statistics for every layer."""

    def __init__(self, arch: str, dtype=torch.float32, **dims):
        self.model, self.tokenizer = tiny(arch, **dims)
        self.model.to(dtype)
        self.spec = model_spec(self.model)
        self.c = key_second_moments(self.model, self.tokenizer, range(self.spec.num_layers))

    def ctx(self, seed: int = 0, c=None) -> EditContext:
        source = self.c if c is None else c
        return EditContext(self.tokenizer, self.spec, second_moment=lambda layer: source[layer], seed=seed)


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def apply_delta(model: torch.nn.Module, delta) -> None:
    """W += ΔW in each parameter's storage layout (what the session does, without the op)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ld in delta.layers:
            dw = ld.dense()
            params[ld.name] += (dw.T if ld.transposed else dw).to(params[ld.name].dtype)


FAST = dict(v_num_grad_steps=6)
