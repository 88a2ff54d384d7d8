"""Prompt filling, subject location through offsets, context templates."""
from __future__ import annotations

import pytest
import torch

from seqedit.editors import EditContext, _text, keys
from seqedit.models import tiny


def test_fill_and_span():
    text, a, b = _text.fill("Hello. {}", "The mother tongue of {} is", "Ann {Lee}")
    assert text == "Hello. The mother tongue of Ann {Lee} is" and text[a:b] == "Ann {Lee}"
    with pytest.raises(ValueError, match="placeholder"):
        _text.fill("{} and {}", "{}", "x")


@pytest.mark.parametrize("add_bos", [False, True])
def test_subject_last_token_skips_specials(add_bos):
    _, tok = tiny("llama", add_bos=add_bos)
    (row,) = _text.encode_rows(tok, [_text.fill("{}", "{} is", "Bob")], [[5, 6]])
    offset = 1 if add_bos else 0
    assert row.lookup == 2 + offset  # "B","o","b": last subject byte
    prompt_len = len(row.ids) - 1  # the last target token is predicted, not fed
    assert row.ids[-1] == 5 and row.targets == [(prompt_len - 1, 5), (prompt_len, 6)]


def test_subject_last_token_with_merged_tokens():
    offsets = [(0, 3), (3, 10), (10, 14), (14, 17)]  # "The|Danielle D|arr|ieux is"
    assert _text.subject_last_token(offsets, 4, 15, "x" * 17) == 3
    with pytest.raises(ValueError, match="subject"):
        _text.subject_last_token([(0, 0)], 0, 3, "abc")


def test_context_templates_memoised_and_seeded():
    model, tok = tiny("llama")
    ctx = EditContext(tok, None, seed=3)
    a = keys.context_templates(model, tok, ctx, length=4)
    assert keys.context_templates(model, tok, ctx, length=4) is a
    b = keys.context_templates(model, tok, EditContext(tok, None, seed=3), length=4)
    assert a == b and a[0] == ("{}",) and len(a[1]) == 5
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in a[1])
    state = torch.random.get_rng_state()
    keys.context_templates(model, tok, EditContext(tok, None, seed=4), length=4)
    assert torch.equal(state, torch.random.get_rng_state())  # private generator only


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_rows_cut_after_lookup_read_the_same(arch):
    """Keys, MLP outputs and block outputs at the lookup do not depend on later tokens (causal)."""
    from seqedit.models import spec as model_spec

    model, tok = tiny(arch, num_layers=3)
    model.to(torch.float64)
    s = model_spec(model)
    texts = [_text.fill(t, p, subj) for t, p, subj in [
        ("{}", "The mother tongue of {} is", "Danielle Darrieux"),
        ("Once upon a time. {}", "{}, who plays the", "Carol"),
        ("{}", "{} lives in the city of", "Al"),
    ]]
    full = _text.encode_rows(tok, texts)
    cut = _text.through_lookup(full)
    assert [len(r.ids) for r in cut] == [r.lookup + 1 for r in full]
    assert sum(len(r.ids) for r in cut) < sum(len(r.ids) for r in full)
    reads = {"keys": (0, 2), "blocks": (1, 2), "mlp_outs": (0, 1)}
    a = keys.read(model, s, _text.pad(full, _text.pad_id(tok)), **reads)
    b = keys.read(model, s, _text.pad(cut, _text.pad_id(tok)), **reads)
    assert a.keys() == b.keys() and len(a) == 6
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-6, atol=1e-6)  # read() returns float32


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_key_reader_resumes_at_its_start_layer(arch):
    """Reads after the first run only layers start..: same reads as full forwards, lower layers idle."""
    from seqedit.data import EditRequest
    from seqedit.models import spec as model_spec

    model, tok = tiny(arch, num_layers=4)
    model.to(torch.float64)
    s = model_spec(model)
    reqs = [EditRequest(prompt="The mother tongue of {} is", subject="Danielle", target_new="French"),
            EditRequest(prompt="{} plays the", subject="Al", target_new="violin")]
    temps = (("{}",), ("A b c. {}", "Hello there. {}"))
    reader = keys.KeyReader(model, s, tok, reqs, temps, start=1, upto=3)
    calls = []
    with s.layer(model, 0).register_forward_hook(lambda *a: calls.append(1)):
        first = reader([1], blocks=[3])
        assert len(calls) == 1
        gen = torch.Generator().manual_seed(0)
        u = torch.randn(s.hidden_size, 1, generator=gen, dtype=torch.float64)
        v = torch.randn(s.mlp_hidden_size, 1, generator=gen, dtype=torch.float64)
        for layer in (1, 2):
            with keys.added_deltas(model, s, {layer: (u, v)}):
                got = reader([layer + 1], blocks=[3], mlp_outs=[layer])
                want = keys.compute_keys(model, s, tok, reqs, temps, [layer + 1], blocks=[3], mlp_outs=[layer])
            assert got.keys() == want.keys()
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-6)
            assert not torch.allclose(got[("bare_block", 3)], first[("bare_block", 3)])
    assert len(calls) == 1 + 2  # the two compute_keys only; the reader's later reads start at layer 1


def test_key_reader_range_must_not_be_empty():
    with pytest.raises(ValueError, match=r"upto \(1\) must be >= start \(2\)"):
        keys.Resume(start=2, upto=1)
