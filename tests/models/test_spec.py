import dataclasses

import pytest
import torch
from torch import nn

from seqedit.models import TINY_ARCHS, ModelSpec, UnsupportedArchitectureError, spec, tiny

EXPECTED = {
    # arch: (layers_path, mlp_out_template, final_norm_path, transposed, tied)
    "llama": ("model.layers", "model.layers.{}.mlp.down_proj", "model.norm", False, False),
    "qwen2": ("model.layers", "model.layers.{}.mlp.down_proj", "model.norm", False, False),
    "gemma3": ("model.layers", "model.layers.{}.mlp.down_proj", "model.norm", False, True),
    "gpt2": ("transformer.h", "transformer.h.{}.mlp.c_proj", "transformer.ln_f", True, True),
    "gptj": ("transformer.h", "transformer.h.{}.mlp.fc_out", "transformer.ln_f", False, False),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.layers.{}.mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", False, False),
}


@pytest.fixture(scope="module", params=TINY_ARCHS)
def tiny_model(request):
    model, tok = tiny(request.param)
    return request.param, model, tok


def test_paths_and_sizes(tiny_model):
    arch, model, _ = tiny_model
    s = spec(model)
    layers_path, out_template, norm_path, transposed, tied = EXPECTED[arch]
    assert (s.layers_path, s.mlp_out_template, s.final_norm_path) == (layers_path, out_template, norm_path)
    assert s.mlp_out_transposed is transposed
    assert s.tied_lm_head is tied
    assert s.norm_bias is (arch in ("gpt2", "gptj", "gpt_neox"))  # LayerNorm vs RMSNorm streams
    assert (s.num_layers, s.hidden_size, s.mlp_hidden_size, s.max_positions) == (4, 64, 160, 128)
    assert s.mlp_path_template == out_template.rsplit(".", 1)[0]
    assert s.lm_head(model) is model.get_output_embeddings()
    if tied:
        assert s.lm_head(model).weight is model.get_input_embeddings().weight


def test_weight_name_and_orientation(tiny_model):
    _, model, _ = tiny_model
    s = spec(model)
    params = dict(model.named_parameters())
    for i in range(s.num_layers):
        weight = params[s.mlp_out_weight_name(i)]
        assert weight is s.mlp_out(model, i).weight
        # Stored [in, out] when transposed (GPT-2 Conv1D), [out, in] otherwise.
        expected = (s.mlp_hidden_size, s.hidden_size) if s.mlp_out_transposed else (s.hidden_size, s.mlp_hidden_size)
        assert tuple(weight.shape) == expected


def test_gpt2_uses_conv1d_transposed():
    from transformers.pytorch_utils import Conv1D

    model, _ = tiny("gpt2")
    s = spec(model)
    proj = s.mlp_out(model, 0)
    assert isinstance(proj, Conv1D)
    assert tuple(proj.weight.shape) == (160, 64)  # [in, out]
    assert s.mlp_out_transposed


def test_hooks_see_keys_values_and_block_outputs(tiny_model):
    _, model, tok = tiny_model
    s = spec(model)
    seen = {}
    handles = []
    for i in range(s.num_layers):
        handles.append(s.mlp_out(model, i).register_forward_hook(
            lambda m, inp, out, i=i: seen.__setitem__(("key", i), (inp[0].shape, out.shape))))
        handles.append(s.layer(model, i).register_forward_hook(
            lambda m, inp, out, i=i: seen.__setitem__(("block", i), s.block_hidden(out).shape)))
    batch = tok(["Paris is in", "x"], padding=True, return_tensors="pt")
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    n = batch["input_ids"].shape[1]
    for i in range(s.num_layers):
        key_shape, value_shape = seen[("key", i)]
        assert tuple(key_shape) == (2, n, s.mlp_hidden_size)
        assert tuple(value_shape) == (2, n, s.hidden_size)
        assert tuple(seen[("block", i)]) == (2, n, s.hidden_size)


def test_block_hidden_read_and_replace(tiny_model):
    _, model, tok = tiny_model
    s = spec(model)
    last = s.num_layers - 1
    batch = tok(["abc"], return_tensors="pt")
    captured = {}
    h1 = s.layer(model, last).register_forward_hook(lambda m, i, o: captured.__setitem__("h", s.block_hidden(o)))
    h2 = s.final_norm(model).register_forward_hook(lambda m, i, o: captured.__setitem__("norm_in", i[0]))
    with torch.no_grad():
        model(**batch)
    h1.remove()
    h2.remove()
    # The last block's hidden states are what the final norm receives.
    torch.testing.assert_close(captured["h"], captured["norm_in"])
    # Replacing them through with_block_hidden changes the logits as a zeroed residual stream would.
    h = s.layer(model, last).register_forward_hook(
        lambda m, i, o: s.with_block_hidden(o, torch.zeros_like(s.block_hidden(o))))
    with torch.no_grad():
        zeroed = model(**batch).logits
        h.remove()
        expected = s.lm_head(model)(s.final_norm(model)(torch.zeros_like(captured["h"])))
    torch.testing.assert_close(zeroed, expected)


def test_final_norm_then_lm_head_gives_logits(tiny_model):
    _, model, tok = tiny_model
    s = spec(model)
    captured = {}
    handle = s.final_norm(model).register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    batch = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        handle.remove()
        again = s.lm_head(model)(captured["h"])
    torch.testing.assert_close(again, logits)


class _Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, **kw):
        return self.inner(**kw)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_wrapped_and_renamed_model(arch):
    model, tok = tiny(arch)
    plain = spec(model)
    # A renamed class and a foreign model_type: detection must not care.
    model.__class__ = type("TotallyCustomLM", (type(model),), {})
    model.config.model_type = "not_a_real_family"
    wrapped = _Wrapper(model)
    s = spec(wrapped)
    assert s.layers_path == "inner." + plain.layers_path
    assert s.mlp_out_template == "inner." + plain.mlp_out_template
    assert s.final_norm_path == "inner." + plain.final_norm_path
    assert s.lm_head_path == "inner." + plain.lm_head_path
    assert s.mlp_out_weight_name(1) in dict(wrapped.named_parameters())
    assert s.mlp_out(wrapped, 1) is plain.mlp_out(model, 1)
    assert dataclasses.replace(s, arch=plain.arch, layers_path=plain.layers_path, mlp_path_template=plain.mlp_path_template,
                               mlp_out_template=plain.mlp_out_template, final_norm_path=plain.final_norm_path,
                               lm_head_path=plain.lm_head_path) == plain


def test_unsupported_model_says_what_was_looked_for():
    with pytest.raises(UnsupportedArchitectureError, match="down_proj.*c_proj.*fc_out.*dense_4h_to_h"):
        spec(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)))


def test_blocks_without_final_norm_or_head_are_rejected():
    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.down_proj = nn.Linear(16, 8)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = Mlp()

    class Net(nn.Module):
        def __init__(self, with_norm):
            super().__init__()
            self.layers = nn.ModuleList([Block(), Block()])
            if with_norm:
                self.norm = nn.LayerNorm(8)

    with pytest.raises(UnsupportedArchitectureError, match="final norm"):
        spec(Net(with_norm=False))
    with pytest.raises(UnsupportedArchitectureError, match="LM head"):
        spec(Net(with_norm=True))


def test_not_a_module():
    with pytest.raises(TypeError):
        spec("llama")


def _with_layers(n):
    base = spec(tiny("llama", num_layers=2)[0])
    return dataclasses.replace(base, num_layers=n)


@pytest.mark.parametrize("n_layers, band, rome", [
    (32, [4, 5, 6, 7, 8], 5), (30, [4, 5, 6, 7, 8], 5), (28, [4, 5, 6, 7, 8], 5),
    (18, [2, 3, 4, 5, 6], 3), (12, [2, 3, 4, 5, 6], 3), (6, [1, 2, 3, 4, 5], 2),
    (5, [0, 1, 2, 3, 4], 1), (4, [0, 1, 2, 3], 1), (1, [0], 0),
])
def test_default_layer_rule(n_layers, band, rome):
    s = _with_layers(n_layers)
    assert s.default_edit_layers() == band
    assert s.default_rome_layer() == rome


def test_default_edit_layers_n():
    s = _with_layers(32)
    assert s.default_edit_layers(1) == [4]
    assert s.default_edit_layers(30) == list(range(2, 32))
    with pytest.raises(ValueError):
        s.default_edit_layers(0)


def test_layer_index_bounds():
    model, _ = tiny("llama")
    s = spec(model)
    assert s.layer(model, -1) is s.layer(model, 3)
    assert s.mlp_out_weight_name(-1) == s.mlp_out_weight_name(3)
    with pytest.raises(IndexError):
        s.mlp(model, 4)


def test_spec_is_frozen():
    s = _with_layers(4)
    assert isinstance(s, ModelSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_layers = 5
