"""GORA (experimental) on tiny random models: zero when nothing changed, growing with a planted
change, outliers where the change was planted, read-only, and reading the states it claims."""
from __future__ import annotations

import contextlib

import pytest
import seqedit.data
import seqedit.models
import torch
from seqedit.data import EditRequest
from seqedit.editors import _text
from seqedit.metrics import create
from seqedit.metrics._gora_graph import pair_logprobs, read_states
from seqedit.metrics.base import EvalContext
from seqedit.metrics.gora import GoraConfig, GoraEvaluator
from test_scoring import reference_score

N_PROBES, K = 60, 5
EDITS = [EditRequest(prompt="The capital of {} is", subject="Veloria", target_new="Paris",
                     target_true="Rome", case_id="e0"),
         EditRequest(prompt="{} plays the", subject="Mira Tolen", target_new="violin",
                     target_true="drums", case_id="e1")]


@pytest.fixture(scope="module")
def probes():
    return seqedit.data.load("counterfact", split="train", limit=N_PROBES)


def make_ctx(model, tok, layers, requests=EDITS):
    """An EvalContext whose unedited() swaps the weights' values at creation in and back."""
    spec = seqedit.models.spec(model)
    names = tuple(spec.mlp_out_weight_name(i) for i in layers)
    params = dict(model.named_parameters())
    base = {n: params[n].data.clone() for n in names}

    @contextlib.contextmanager
    def unedited():
        current = {n: params[n].data for n in names}
        for n in names:
            params[n].data = base[n]
        try:
            yield
        finally:
            for n in names:
                params[n].data = current[n]

    return EvalContext(tokenizer=tok, spec=spec, weights=names, unedited=unedited,
                       live_requests=lambda: list(requests))


def weight(model, layer):
    spec = seqedit.models.spec(model)
    return dict(model.named_parameters())[spec.mlp_out_weight_name(layer)]


def plant(model, layer, u, v):
    """W += u vᵀ in the projection's own orientation (out = W k for Linear, k W for Conv1D)."""
    w = weight(model, layer)
    delta = torch.outer(u, v)
    w.data = w.data + (delta.T if seqedit.models.spec(model).mlp_out_transposed else delta)


def values(result):
    return {m.name: m.value for m in result.metrics}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unchanged_model_scores_zero(arch, probes, request):
    model, tok = request.getfixturevalue(arch)
    ctx = make_ctx(model, tok, [1, 2])
    ev = GoraEvaluator(probes=probes, k=K)
    ev.prepare(model, ctx)
    result = ev.evaluate(model, ctx)
    got = values(result)
    for name in ("ged", "ged_ego", "ged_ego_max", "flip_all", "flip_neighbours", "flip_random",
                 "impact", "outliers", "change_max", "target_change"):
        assert got[name] == 0.0, name
    now = ev.probe_states(model, ctx)
    d = ev.change_scores(now, now)
    assert result.info["outliers"] == [] and ev.outliers(d) == [] and float(d.abs().max()) == 0.0
    for m in result.metrics:
        assert m.protocol["family"] == "gora" and m.protocol["experimental"] is True
        assert m.protocol["layer"] == 2 and m.protocol["nodes"] == N_PROBES
        assert m.protocol["reading"] in ("A", "B", "outlier")


def test_grows_with_planted_change(llama, probes):
    model, tok = llama
    ctx = make_ctx(model, tok, [2])
    ev = GoraEvaluator(probes=probes, k=K)
    ev.prepare(model, ctx)
    gen = torch.Generator().manual_seed(0)
    w = weight(model, 1)
    u, v = torch.randn(w.shape[0], generator=gen), torch.randn(w.shape[1], generator=gen)
    base = w.data.clone()
    seen = []
    for scale in (0.0, 0.1, 1.0):  # planted one layer below the read layer
        w.data = base + scale * torch.outer(u, v)
        seen.append(values(ev.evaluate(model, ctx)))
    w.data = base
    for name in ("ged", "ged_ego", "change_mean", "target_change"):
        assert seen[0][name] == 0.0 < seen[1][name] < seen[2][name], name
    assert seen[0]["flip_all"] == 0.0 <= seen[1]["flip_all"] <= seen[2]["flip_all"]
    assert seen[2]["flip_all"] > 0


def test_outliers_are_the_planted_nodes(llama, probes):
    model, tok = llama
    spec = seqedit.models.spec(model)
    ctx = make_ctx(model, tok, [2])
    ev = GoraEvaluator(probes=probes, k=K)
    ev.prepare(model, ctx)
    planted = [3, 17]
    # v has vᵀk = 1 on the planted probes' keys and 0 on every other probe's, so at the read
    # layer's block output only the planted nodes move.
    keys = read_states(model, spec, tok, probes, site="key", layer=2, batch_size=16).double()
    want = torch.zeros(len(probes), dtype=torch.float64)
    want[planted] = 1.0
    v = torch.linalg.pinv(keys) @ want
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(spec.hidden_size, generator=gen, dtype=torch.float64)
    before = ev.probe_states(model, ctx)
    h0 = before[planted[0]].double()
    plant(model, 2, (u * h0.norm() / u.norm()).float(), v.float())
    result = ev.evaluate(model, ctx)
    found = [o["probe"] for o in result.info["outliers"]]
    assert sorted(found) == planted and values(result)["outliers"] == 2.0
    assert {o["case_id"] for o in result.info["outliers"]} == {probes[i].case_id for i in planted}
    # SORA's reading: the same probes, in the same order, from two sets of states
    d = ev.change_scores(before, ev.probe_states(model, ctx))
    again = ev.outliers(d)
    assert again == found and [ev.probes[i].case_id for i in again] == [
        o["case_id"] for o in result.info["outliers"]]
    assert d[again].tolist() == [o["score"] for o in result.info["outliers"]]
    # The key of the same layer is the projection's input: an edit there is invisible to it.
    key_ev = GoraEvaluator(probes=probes, k=K, site="key")
    with ctx.unedited():
        key_ev.prepare(model, ctx)
    assert values(key_ev.evaluate(model, ctx))["change_max"] == 0.0


def test_evaluate_leaves_weights_bit_identical(gpt2, probes):
    model, tok = gpt2
    ctx = make_ctx(model, tok, [1])
    ev = create("gora", probes=probes, k=K)
    ev.prepare(model, ctx)
    gen = torch.Generator().manual_seed(2)
    spec = seqedit.models.spec(model)
    plant(model, 1, torch.randn(spec.hidden_size, generator=gen),
          torch.randn(spec.mlp_hidden_size, generator=gen) * 0.05)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    ev.evaluate(model, ctx)
    ev.probe_states(model, ctx)
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_early_stopped_read_matches_full_forward(arch, probes, request):
    model, tok = request.getfixturevalue(arch)
    model = model.double()
    spec = seqedit.models.spec(model)
    ran_above = []
    hook = spec.layer(model, 3).register_forward_hook(lambda *a: ran_above.append(1))
    try:
        early = read_states(model, spec, tok, probes[:9], site="block_out", layer=1, batch_size=4)
    finally:
        hook.remove()
    assert not ran_above  # the blocks above the read layer never ran
    key = read_states(model, spec, tok, probes[:9], site="key", layer=1, batch_size=4)
    seen = {}
    for i, p in enumerate(probes[:9]):
        text, s0, s1 = _text.fill("{}", p.prompt, p.subject)
        enc = tok(text, return_offsets_mapping=True)
        pos = _text.subject_last_token(enc["offset_mapping"], s0, s1, text)
        grab = spec.mlp_out(model, 1).register_forward_hook(
            lambda mod, args, out: seen.update(key=args[0]))
        try:
            with torch.no_grad():
                out = model(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True)
        finally:
            grab.remove()
        torch.testing.assert_close(early[i], out.hidden_states[2][0, pos].float(),
                                   rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(key[i], seen["key"][0, pos].float(), rtol=1e-7, atol=1e-7)


def test_pair_logprobs_are_true_then_new_per_probe(llama, probes):
    model, tok = llama
    model = model.double()
    chosen = probes[:6]
    got = pair_logprobs(model, tok, chosen, batch_size=4)
    want = [[reference_score(model, tok, p.filled_prompt, t)[0] for t in (p.target_true,
                                                                          p.target_new)]
            for p in chosen]
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-6, atol=0)


def test_layer_defaults_to_deepest_edited_mlp(llama, probes):
    model, tok = llama
    ev = GoraEvaluator(probes=probes[:12], k=3)
    ev.prepare(model, make_ctx(model, tok, [0, 2, 1]))
    assert ev.evaluate(model, make_ctx(model, tok, [])).metrics[0].protocol["layer"] == 2
    ev.prepare(model, make_ctx(model, tok, []))
    assert ev.evaluate(model, make_ctx(model, tok, [])).metrics[0].protocol["layer"] == 2  # L // 2
    final = GoraEvaluator(probes=probes[:12], k=3, site="final")
    final.prepare(model, make_ctx(model, tok, [1]))
    assert final.evaluate(model, make_ctx(model, tok, [1])).metrics[0].protocol["layer"] == 3


def test_no_live_edits_reports_none_with_a_note(llama, probes):
    model, tok = llama
    ctx = make_ctx(model, tok, [1], requests=[])
    ev = GoraEvaluator(probes=probes[:12], k=3)
    ev.prepare(model, ctx)
    result = ev.evaluate(model, ctx)
    assert result.value("ged") == 0.0 and result.value("flip_all") == 0.0
    for name in ("ged_ego", "flip_neighbours", "impact"):
        assert result.get(name).value is None and result.get(name).note


def test_answers_off_skips_reading_b_only(llama, probes):
    model, tok = llama
    ctx = make_ctx(model, tok, [2])
    ev = GoraEvaluator(probes=probes, k=K, answers=False)
    ev.prepare(model, ctx)
    gen = torch.Generator().manual_seed(0)
    plant(model, 1, torch.randn(64, generator=gen), torch.randn(160, generator=gen))
    result = ev.evaluate(model, ctx)
    assert result.value("ged") > 0 and result.value("change_max") > 0
    for name in ("flip_all", "flip_neighbours", "flip_random", "impact"):
        assert result.get(name).value is None and "answers=False" in result.get(name).note


@pytest.mark.parametrize("options, named", [
    ({"k": 0}, "k"), ({"n_probes": -1}, "n_probes"), ({"site": "mlp"}, "site"),
    ({"layer": 1.5}, "layer"), ({"site": "final", "layer": 1}, "layer"),
    ({"z_threshold": -1}, "z_threshold"), ({"top_q": 1.5}, "top_q"),
    ({"z_threshold": None}, "z_threshold"), ({"max_outliers": True}, "max_outliers"),
    ({"min_change": -0.1}, "min_change"), ({"batch_size": 0}, "batch_size"),
    ({"neighbours": 3}, "neighbours"), ({"answers": "yes"}, "answers"),
])
def test_bad_options_raise_naming_the_option(options, named):
    with pytest.raises(ValueError, match=named):
        GoraEvaluator(**options)


def test_a_built_config_is_taken_as_is_and_not_mixed_with_options(probes):
    config = GoraConfig(probes=probes[:12], k=3, site="final")
    assert GoraEvaluator(config).config is config
    with pytest.raises(TypeError, match="not both"):
        GoraEvaluator(config, k=4)
    with pytest.raises(TypeError, match="GoraConfig"):
        GoraEvaluator({"k": 3})


def test_bad_setup_raises_clearly(llama, probes):
    model, tok = llama
    with pytest.raises(ValueError, match="k=12"):
        GoraEvaluator(probes=probes[:12], k=12).prepare(model, make_ctx(model, tok, [1]))
    with pytest.raises(ValueError, match="layer"):
        GoraEvaluator(probes=probes[:12], layer=7).prepare(model, make_ctx(model, tok, [1]))
    with pytest.raises(ValueError, match="target_true"):
        GoraEvaluator(probes=[*probes[:12], EditRequest("{} is", "X", "y")]).prepare(
            model, make_ctx(model, tok, [1]))
    with pytest.raises(RuntimeError, match="prepare"):
        GoraEvaluator().evaluate(model, make_ctx(model, tok, [1]))
