"""Models: loading (packaged GGUF → cached safetensors, local directories, safetensors files),
`ModelSpec` (where blocks, MLP projections, final norm and LM head live, inferred from structure),
and tiny random models for tests.

    model, tok = seqedit.models.load()            # SmolLM2-135M-Instruct, float32, eval, frozen
    s = seqedit.models.spec(model)                # s.mlp_out(model, 4), s.default_edit_layers()
    model, tok = seqedit.models.tiny("gpt2")      # random 4-layer GPT-2 + byte tokenizer
"""

from .loading import CheckpointMismatchError, load
from .packaged import PACKAGED, ModelUnavailableError, cache_root
from .spec import ModelSpec, UnsupportedArchitectureError, spec
from .tiny import ARCHS as TINY_ARCHS
from .tiny import byte_tokenizer, tiny

__all__ = [
    "PACKAGED",
    "TINY_ARCHS",
    "CheckpointMismatchError",
    "ModelSpec",
    "ModelUnavailableError",
    "UnsupportedArchitectureError",
    "byte_tokenizer",
    "cache_root",
    "load",
    "spec",
    "tiny",
]
