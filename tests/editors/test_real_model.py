"""Real CounterFact edits on the packaged SmolLM2-135M (slow; skipped when it is not installed)."""
from __future__ import annotations

import warnings

import pytest
import torch

from seqedit import data, editors
from seqedit.editors import EditContext
from seqedit.metrics.probe import request_probabilities, success

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from seqedit.models import load, spec

    try:
        model, tokenizer = load("smollm2-135m")
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"packaged SmolLM2-135M not available: {exc}")
    s = spec(model)
    from seqedit.stats import second_moments

    layers = sorted({*s.default_edit_layers(), s.default_rome_layer()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = second_moments(model, tokenizer, layers, max_tokens=20000, progress=False)
    return model, tokenizer, s, {layer: c for layer, (c, _) in stats.items()}


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_sequential_counterfact_edits_succeed(smollm2, method):
    model, tokenizer, spec, c = smollm2
    original = {k: v.clone() for k, v in model.state_dict().items()}
    editor = editors.create(method, spec)
    ctx = EditContext(tokenizer, spec, second_moment=c.__getitem__, seed=0)
    requests = data.load("counterfact", limit=3)
    try:
        for request in requests:
            delta = editor.compute(model, [request], ctx)
            assert delta.is_finite()
            params = dict(model.named_parameters())
            with torch.no_grad():
                for ld in delta.layers:
                    dw = ld.dense()
                    params[ld.name] += dw.T if ld.transposed else dw
            post = request_probabilities(model, tokenizer, [request])[0]
            assert success(request, post), (method, request.case_id, post, delta.info)
    finally:
        model.load_state_dict(original)
