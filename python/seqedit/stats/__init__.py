"""Key statistics C = E[k kᵀ] for locate-then-edit methods (ROME, MEMIT, AlphaEdit).

`second_moments(model, tokenizer, layers)` collects every requested layer in one forward pass per
batch, caches each layer's sum under a fingerprint of everything that can move its keys, resumes an
interrupted pass from a checkpoint, and splits the work across torch.distributed ranks.

Modules: `corpus` (documents → deterministic batches), `collect` (hooks and accumulation),
`cache` (fingerprints, checksummed atomic files), `api` (the orchestration).
"""
from .api import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_LENGTH, DEFAULT_MAX_TOKENS, second_moments
from .cache import StatsCacheWarning

__all__ = [
    "second_moments",
    "StatsCacheWarning",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_BATCH_TOKENS",
]
