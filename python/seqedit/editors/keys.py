"""Keys (input of the edited MLP projection at the subject's last token) and context templates.

A key is averaged over context templates the way MEMIT does it: templates come in groups
(`[["{}"], [generated prefixes...]]`), the key is the mean within each group, then the mean of
the group means — so the bare prompt weighs as much as all generated prefixes together.
All templates of all requests go through one padded forward that stops after the deepest layer
that is read.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch

from . import _text
from .base import SolveError

DEFAULT_STARTS = ("The", "Therefore", "Because", "I", "You")


class _Stop(Exception):
    """Raised by a hook once everything needed has been read: the layers above are skipped."""


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def context_templates(model, tokenizer, ctx, *, starts=DEFAULT_STARTS, length: int = 10, top_k: int = 5):
    """`[["{}"], [prefix + ". {}", ...]]`, prefixes sampled from the model itself, memoised in `ctx.memo`.

    Sampling is top-k with a private generator seeded from `ctx.seed`, so a session reproduces
    its templates; they are generated once (from the model as it is at the first edit) and reused.
    A model whose logits are not finite cannot be sampled: SolveError.
    """
    key = ("context_templates", tuple(starts), int(length), int(top_k), int(ctx.seed))
    if key not in ctx.memo:
        gen = torch.Generator().manual_seed(int(ctx.seed))
        prefixes = [_sample(model, tokenizer, s, length, top_k, gen) for s in starts]
        # Braces would be read as placeholders later; upstream blanks them the same way.
        prefixes = [p.replace("{", " ").replace("}", " ") + ". {}" for p in prefixes]
        ctx.memo[key] = (("{}",), tuple(prefixes)) if prefixes else (("{}",),)
    return ctx.memo[key]


@torch.no_grad()
def _sample(model, tokenizer, start: str, length: int, top_k: int, gen: torch.Generator) -> str:
    ids = list(tokenizer(start)["input_ids"])
    n_special = len(ids) - len(tokenizer(start, add_special_tokens=False)["input_ids"])
    device = model_device(model)
    while len(ids) - n_special < length:
        logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0, -1]
        if not bool(torch.isfinite(logits).all()):  # sampling would fail inside torch.multinomial
            raise SolveError("the model's logits are not finite (sampling context templates)")
        top = torch.topk(logits.float().cpu(), min(top_k, logits.shape[-1]))
        choice = top.indices[torch.multinomial(torch.softmax(top.values, -1), 1, generator=gen)].item()
        if choice == tokenizer.eos_token_id:
            break
        ids.append(int(choice))
    return tokenizer.decode(ids, skip_special_tokens=True)


def flat(templates) -> list[str]:
    return [t for group in templates for t in group]


@contextmanager
def added_deltas(model, spec, deltas: dict[int, tuple[torch.Tensor, torch.Tensor]]):
    """Make mlp_out(l) compute (W + u vᵀ) k without touching W: its output gets u (vᵀ k) added.

    This is how MEMIT/AlphaEdit see their partially built update while `compute` leaves the
    weights alone (exception-safe: the hooks go away in all cases).
    """
    def hook_for(u, v):
        def hook(module, args, out):
            x = args[0]
            return out + ((x.to(v.dtype) @ v) @ u.T).to(out.dtype)
        return hook

    with ExitStack() as stack:
        for layer, (u, v) in deltas.items():
            device = model_device(model)
            h = spec.mlp_out(model, layer).register_forward_hook(hook_for(u.to(device), v.to(device)))
            stack.callback(h.remove)
        yield


class Resume:
    """What reads of one batch need to start at layer `start` instead of the embeddings: the
    input of that layer and the arguments the model passed to each layer from there up to `upto`
    (the mask, rotary tables), recorded by the first read. Valid while no layer below `start`
    changes — MEMIT's layer loop only ever adds updates at or above its first layer."""

    def __init__(self, start: int, upto: int):
        if upto < start:
            raise ValueError(f"upto ({upto}) must be >= start ({start})")
        self.start, self.upto = start, upto
        self.hidden: torch.Tensor | None = None
        self.calls: dict[int, tuple] = {}

    def ready(self, deepest: int) -> bool:
        return self.hidden is not None and all(i in self.calls for i in range(self.start, deepest + 1))

    def record(self, stack: ExitStack, model, spec) -> None:
        def keep(i):
            def hook(module, args, kwargs):
                if not args:  # hidden states passed by keyword: nothing safe to replay
                    return
                if i == self.start:
                    self.hidden = args[0].clone()  # in case a model updates it in place
                self.calls[i] = (args[1:], kwargs)
            return hook

        self.hidden, self.calls = None, {}
        for i in range(self.start, self.upto + 1):
            h = spec.layer(model, i).register_forward_pre_hook(keep(i), with_kwargs=True)
            stack.callback(h.remove)

    def run(self, model, spec, deepest: int) -> None:
        h = self.hidden
        for i in range(self.start, deepest + 1):
            args, kwargs = self.calls[i]
            out = spec.layer(model, i)(h, *args, **kwargs)
            h = out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def read(model, spec, batch: _text.Batch, *, keys=(), blocks=(), mlp_outs=(), resume: Resume | None = None) -> dict:
    """One forward; returns `{("key"|"block"|"mlp_out", layer): [N, d] float32}` at `batch.lookup`.

    With `resume`, the forward starts at `resume.start` when an earlier read recorded what that
    needs; otherwise it runs the whole model (up to `resume.upto` at least) and records it.
    """
    rows = torch.arange(batch.input_ids.shape[0], device=batch.lookup.device)
    found: dict = {}
    deepest = max([*keys, *blocks, *mlp_outs], default=None)
    if deepest is None:
        return found
    replay = resume is not None and resume.ready(deepest)
    run_on = resume is not None and not replay and resume.upto > deepest  # record layers later reads need

    def grab(name, layer, take_input):
        def hook(module, args, out):
            t = args[0] if take_input else (out[0] if isinstance(out, tuple) else out)
            found[(name, layer)] = t[rows, batch.lookup].float()
            if layer == deepest and name == last_name and not run_on:
                raise _Stop
        return hook

    def stop(module, args, out):
        raise _Stop

    # The deepest layer's block output is produced after its MLP, so stop on that one if asked.
    last_name = "block" if deepest in blocks else ("mlp_out" if deepest in mlp_outs else "key")
    with ExitStack() as stack:
        for layer in keys:
            m = spec.mlp_out(model, layer)
            stack.callback(m.register_forward_hook(grab("key", layer, True)).remove)
        for layer in mlp_outs:
            m = spec.mlp_out(model, layer)
            stack.callback(m.register_forward_hook(grab("mlp_out", layer, False)).remove)
        for layer in blocks:
            m = spec.layer(model, layer)
            stack.callback(m.register_forward_hook(grab("block", layer, False)).remove)
        if run_on:
            stack.callback(spec.layer(model, resume.upto).register_forward_hook(stop).remove)
        try:
            if replay:
                resume.run(model, spec, deepest)
            else:
                if resume is not None:
                    resume.record(stack, model, spec)
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        except _Stop:
            pass
    return found


def template_rows(tokenizer, requests, templates) -> list[_text.Row]:
    """Rows request-major: for each request, every template (flattened) filled with its prompt."""
    texts = [_text.fill(t, r.prompt, r.subject) for r in requests for t in flat(templates)]
    return _text.encode_rows(tokenizer, texts)


def group_mean(per_row: torch.Tensor, n_requests: int, templates) -> torch.Tensor:
    """[n_requests * n_templates, d] → [n_requests, d]: mean within each group, then of the groups."""
    sizes = [len(g) for g in templates]
    x = per_row.reshape(n_requests, sum(sizes), -1)
    groups = torch.split(x, sizes, dim=1)
    return torch.stack([g.mean(1) for g in groups], 0).mean(0)


def compute_keys(model, spec, tokenizer, requests, templates, layers, *, blocks=(), mlp_outs=()) -> dict:
    """Template-averaged keys per layer `{layer: [b, d_in]}`, plus the bare-prompt reads.

    Also returns `("bare_key", l)` (the key on the bare prompt, template "{}"),
    `("bare_block", l)` for each layer in `blocks` (block output on the bare prompt) and
    `("bare_mlp_out", l)` for each layer in `mlp_outs` (MLP output on the bare prompt).
    """
    return KeyReader(model, spec, tokenizer, requests, templates)(layers, blocks=blocks, mlp_outs=mlp_outs)


class KeyReader:
    """`compute_keys` on one set of rows, callable repeatedly. With `start`/`upto` (see `Resume`)
    the reads after the first run only layers `start`.. — MEMIT reads keys once per edited layer,
    each time after updating the layer below, and the layers under its band never change."""

    def __init__(self, model, spec, tokenizer, requests, templates, *, start=None, upto=None):
        if flat(templates)[0] != "{}":
            raise ValueError("the first context template must be the bare prompt '{}'")
        self.model, self.spec, self.templates, self.n_requests = model, spec, templates, len(requests)
        rows = _text.through_lookup(template_rows(tokenizer, requests, templates))
        self.batch = _text.pad(rows, _text.pad_id(tokenizer), model_device(model))
        self.resume = None if start is None else Resume(start, start if upto is None else upto)

    def __call__(self, layers, *, blocks=(), mlp_outs=()) -> dict:
        found = read(self.model, self.spec, self.batch, keys=tuple(layers), blocks=tuple(blocks),
                     mlp_outs=tuple(mlp_outs), resume=self.resume)
        n_t = len(flat(self.templates))
        out: dict = {}
        for layer in layers:
            k = found[("key", layer)]
            out[layer] = group_mean(k, self.n_requests, self.templates)
            out[("bare_key", layer)] = k[::n_t]
        for layer in blocks:
            out[("bare_block", layer)] = found[("block", layer)][::n_t]
        for layer in mlp_outs:
            out[("bare_mlp_out", layer)] = found[("mlp_out", layer)][::n_t]
        return out


@torch.no_grad()
def mlp_out_is_residual(model, spec, tokenizer, layer: int) -> bool:
    """Whether the block adds its MLP output to the residual stream unchanged.

    Found by behaviour, not by name: a random vector added to the output of `mlp_out(layer)` on a
    short prompt must reappear, to rounding, in the block's output. False where the block
    normalises (or otherwise transforms) the MLP output before the residual add — Gemma-2/3's
    post_feedforward_layernorm — which is what decides how MEMIT-style methods place targets.
    """
    rows = _text.encode_rows(tokenizer, [_text.fill("{}", "{} quick brown fox", "The")])
    batch = _text.pad(rows, _text.pad_id(tokenizer), model_device(model))
    gen = torch.Generator().manual_seed(0)
    seen: dict = {}

    def add(module, args, out):
        scale = out.detach().float().norm(dim=-1, keepdim=True).clamp(min=1e-3)
        r = torch.randn(out.shape, generator=gen).to(out.device)
        seen["r"] = (r / r.norm(dim=-1, keepdim=True) * scale).to(out.dtype)
        return out + seen["r"]

    def block_out(hook):
        with ExitStack() as stack:
            if hook is not None:
                stack.callback(spec.mlp_out(model, layer).register_forward_hook(hook).remove)
            found = read(model, spec, batch, blocks=(layer,))
        return found[("block", layer)]

    moved = block_out(add) - block_out(None)
    r = seen["r"][torch.arange(batch.input_ids.shape[0]), batch.lookup].float()
    return bool((moved - r).norm() <= 1e-3 * r.norm())
