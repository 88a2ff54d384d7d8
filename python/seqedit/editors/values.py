"""Target-value optimisation: ROME's "compute_v" (Meng et al. 2022, "Locating and Editing Factual
Associations in GPT", arXiv 2202.05262, §3) and MEMIT's "compute_z" (Meng et al. 2023, "Mass-Editing
Memory in a Transformer", arXiv 2210.07229, §4).

For each request a vector δ is added to one hidden state (ROME: output of mlp_out at its layer;
MEMIT/AlphaEdit: block output of the last edited layer, or — targets "mlp_out" — one δ per
edited layer at each mlp_out output) at the subject's last token of every rewriting prompt
(context template + prompt + target tokens but the last). Per request,

    loss = mean over prompts of (−Σ log p(target tokens) / #target tokens)
         + kl_factor · KL(p_δ ‖ p_0) at the subject's last token of `kl_prompt`
         + v_weight_decay · ‖δ‖ / ‖v_init‖²      (unsquared over squared: upstream quirk, kept;
                                                   summed over sites when there are several)

minimised with Adam(v_lr) for at most v_num_grad_steps forwards; a request stops when its loss
< early_stop_loss (or, optionally, at the argmax_patience-th forward at which its target beats
every other token by more than argmax_margin nats at every scored position); after every update
‖δ‖ is clamped to clamp_norm_factor · ‖v_init‖. The KL term is torch's
`kl_div(init, cur, log_target=True)`, i.e. KL(current ‖ initial) — what upstream computes, even
though its docs call it the other way round. v* = v_init + δ.

Two implementations compute the same thing:

* `reference_target_values`: one request at a time, a full model forward per step with a hook
  adding δ, logits over the whole batch — what upstream does; the benchmark baseline.
* the fast path: all requests (each with its own δ) in one padded batch. One initial forward
  records the hidden states at the injection point, the arguments each upper layer was called
  with (mask, rotary tables) and every layer's keys/values. Each step then runs only the layers
  from the injection point to v_loss_layer, and only on the positions δ can reach — from each
  row's lookup token on; earlier positions enter through their recorded keys/values, which δ
  cannot change (causal attention). See `_replay.py`; models it does not recognise fall back to
  replaying whole rows. Logits are computed only on the scored rows (final norm + LM head on
  [#targets + #requests, d] instead of [N·T, d]).

A non-finite v* (non-finite hidden states or logits, a diverged optimisation) is a `SolveError`
naming the layer: no editor can write it.

Adam is elementwise, so one optimiser over the [b, d] stack updates each row exactly as a
separate optimiser would; a request that has stopped has its row restored after each update, and
leaves the batch: later steps replay only the rows of the requests still optimising (in a suffix
replay; a whole-row replay keeps every row, its recorded layer arguments not being known to be
per-row).
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import torch

from . import _text
from ._replay import SuffixReplay
from .base import SolveError
from .keys import _Stop, flat, model_device


@dataclass
class ValueResult:
    v_star: torch.Tensor  # [b, d] float32
    v_init: torch.Tensor  # [b, d] float32
    delta: torch.Tensor  # [b, d] float32
    steps: list[int]  # optimiser updates applied per request
    p_first: list[float]  # mean target probability at the first forward
    p_last: list[float]  # ... at the last forward
    loss: list[float]
    trajectory: list[list[torch.Tensor]] = field(default_factory=list)  # per request, δ after each update
    mode: str = "reference"  # how the steps ran: "suffix", "full" (fast paths) or "reference"


@dataclass
class _Problem:
    batch: _text.Batch
    req_of_row: torch.Tensor  # [N]
    first_row: torch.Tensor  # [b] the bare rewriting prompt of each request (v_init is read there)
    kl_row: torch.Tensor  # [b]
    tgt_row: torch.Tensor  # [M]
    tgt_pos: torch.Tensor
    tgt_tok: torch.Tensor
    tgt_req: torch.Tensor
    tgt_w: torch.Tensor  # 1 / (#tokens · #prompts): per-prompt mean, then mean over prompts
    tgt_row_w: torch.Tensor  # 1 / #tokens
    n_req: int
    n_rows: int


def _problem(tokenizer, requests, templates, kl_prompt: str, device) -> _Problem:
    rows: list[_text.Row] = []
    req_of_row, first_row, kl_row = [], [], []
    tgt = {"row": [], "pos": [], "tok": [], "req": [], "w": [], "rw": []}
    temps = flat(templates)
    for ri, r in enumerate(requests):
        t_ids = _text.target_ids(tokenizer, r.target_new)
        texts = [_text.fill(t, r.prompt, r.subject) for t in temps]
        first_row.append(len(rows))
        for row in _text.encode_rows(tokenizer, texts, [t_ids] * len(texts)):
            for pos, tok in row.targets:
                tgt["row"].append(len(rows))
                tgt["pos"].append(pos)
                tgt["tok"].append(tok)
                tgt["req"].append(ri)
                tgt["w"].append(1.0 / (len(t_ids) * len(temps)))
                tgt["rw"].append(1.0 / len(t_ids))
            rows.append(row)
            req_of_row.append(ri)
        kl_row.append(len(rows))
        kl_text = _text.fill(kl_prompt, "{}", r.subject)
        rows.extend(_text.through_lookup(_text.encode_rows(tokenizer, [kl_text])))  # scored at lookup only
        req_of_row.append(ri)
    batch = _text.pad(rows, _text.pad_id(tokenizer), device)

    def t(x, dtype=torch.long):
        return torch.tensor(x, dtype=dtype, device=device)

    return _Problem(
        batch, t(req_of_row), t(first_row), t(kl_row), t(tgt["row"]), t(tgt["pos"]), t(tgt["tok"]),
        t(tgt["req"]), t(tgt["w"], torch.float32), t(tgt["rw"], torch.float32), len(requests), len(rows),
    )


def logits_at(model, spec, h: torch.Tensor) -> torch.Tensor:
    """LM logits (float32) for hidden states [..., d] taken before the final norm."""
    logits = spec.lm_head(model)(spec.final_norm(model)(h)).float()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:  # Gemma-style soft cap, applied by the model's own forward too
        logits = torch.tanh(logits / cap) * cap
    return logits


def _site(model, spec, layer: int, site: str) -> torch.nn.Module:
    if site == "block":
        return spec.layer(model, layer)
    if site == "mlp_out":
        return spec.mlp_out(model, layer)
    raise ValueError(f"site must be 'block' or 'mlp_out', got {site!r}")


def _out(o):
    return o[0] if isinstance(o, tuple) else o


def _optimise(forward, p: _Problem, n_sites: int, width: int, device, cfg, trace: bool) -> ValueResult:
    """The shared Adam loop; `forward(δ [a,s,d], req [a])` runs the requests still optimising
    (`req`, ascending) with their δ and returns their target log-probs [M_req, V] (in the order of
    p's targets), KL log-probs [a,V] and v_base [a,s,d]. A request that has stopped leaves the
    forward, so a batch costs the sum of its requests' steps rather than b × the longest.

    `v_base` is the hidden state at each injection site before its δ is added; like upstream,
    v_init and the KL reference are read from the first forward (δ = 0 then). Weight decay and
    clamp apply per site. v* = v_base of the request's last forward + δ: at a site above another
    site, v_base itself moves with the lower δ, and v* is what that site must output in the end.
    With one site the result has no site axis.
    """
    b = p.n_req
    delta = torch.zeros(b, n_sites, width, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.v_lr)
    active = torch.ones(b, dtype=torch.bool)
    leading = torch.zeros(b, dtype=torch.long)  # forwards at which the target led (argmax stop)
    steps, p_first, p_last, last_loss = [0] * b, [0.0] * b, [0.0] * b, [0.0] * b
    trajectory: list[list[torch.Tensor]] = [[] for _ in range(b)]
    v_last = torch.zeros(b, n_sites, width, device=device)
    kl_init = v_init = None
    rew = torch.zeros(p.n_rows, dtype=torch.bool, device=device)
    rew[p.tgt_row] = True
    n_prompts = torch.bincount(p.req_of_row[rew], minlength=b).clamp(min=1)
    for it in range(cfg.v_num_grad_steps):
        req = active.nonzero()[:, 0]
        req_d, on = req.to(device), active.to(device)
        mine = on[p.tgt_req]  # the targets of this forward's requests
        slot = (on.long().cumsum(0) - 1)[p.tgt_req[mine]]  # ... and their request's place in req
        tok = p.tgt_tok[mine]
        d_req = delta[req_d]
        lp_t, lp_kl, v_base = forward(d_req, req_d)
        v_last[req_d] = v_base.detach().float()
        if kl_init is None:
            kl_init, v_init = lp_kl.detach(), v_last.clone()
        tok_lp = lp_t.gather(1, tok[:, None])[:, 0]
        nll = torch.zeros(len(req), device=device).index_add(0, slot, -tok_lp * p.tgt_w[mine])
        kl = cfg.kl_factor * (lp_kl.exp() * (lp_kl - kl_init[req_d])).sum(-1)
        wd = cfg.v_weight_decay * (d_req.norm(dim=-1) / v_init[req_d].norm(dim=-1) ** 2).sum(1)
        loss_t = nll + kl + wd
        with torch.no_grad():
            row_nll = torch.zeros(p.n_rows, device=device).index_add(0, p.tgt_row[mine], -tok_lp * p.tgt_row_w[mine])
            prob = torch.zeros(b, device=device).index_add(0, p.req_of_row[rew], torch.exp(-row_nll[rew]))
            prob = (prob / n_prompts)[req_d].cpu()
            loss = loss_t.detach().cpu()
        stop = (loss < cfg.early_stop_loss) | (it == cfg.v_num_grad_steps - 1)
        if cfg.early_stop_on_argmax:
            leading[req] += _leads(lp_t.detach(), tok_lp.detach(), tok, slot, len(req), cfg.argmax_margin)
            stop |= leading[req] >= cfg.argmax_patience
        for j, i in enumerate(req.tolist()):
            if it == 0:
                p_first[i] = float(prob[j])
            p_last[i], last_loss[i] = float(prob[j]), float(loss[j])
            if stop[j]:
                steps[i] = it
        active[req[stop]] = False
        if not active.any():
            break
        opt.zero_grad(set_to_none=True)
        loss_t[~stop.to(device)].sum().backward(inputs=[delta])
        with torch.no_grad():  # Adam's momentum still moves the rows of stopped requests: restore them
            keep = delta.detach().clone()
            opt.step()
            done = ~active.to(device)
            delta[done] = keep[done]
            max_norm = cfg.clamp_norm_factor * v_init.norm(dim=-1)
            norm = delta.norm(dim=-1)
            delta.mul_(torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))[..., None])
        if trace:
            for i in range(b):
                if active[i]:
                    trajectory[i].append(_sites(delta[i].detach().cpu().clone()))
    d = delta.detach()
    return ValueResult(_sites(v_last + d), _sites(v_init), _sites(d), steps, p_first, p_last, last_loss,
                       trajectory)


def _leads(lp_t, tok_lp, tok, slot, n: int, margin: float) -> torch.Tensor:
    """[n] bool (CPU): request j's target `tok` beats every other token by more than `margin` at
    each of its scored positions (those with slot j)."""
    rival = lp_t.scatter(1, tok[:, None], float("-inf")).amax(-1)
    short = (tok_lp - rival <= margin).float()
    return torch.zeros(n, device=lp_t.device).index_add(0, slot, short).cpu() == 0


def _sites(x: torch.Tensor) -> torch.Tensor:
    """Drop the site axis (second from last) when there is one site."""
    return x.squeeze(-2) if x.shape[-2] == 1 else x


def target_values(model, spec, tokenizer, requests, templates, *, layer, site: str, cfg, trace=False):
    """v* for every request; the fast path unless `cfg.fast` is False.

    `layer` is one layer, or (site "mlp_out" only) a sequence of layers optimised jointly: one δ
    per request and layer, each added to that layer's MLP output, result shaped [b, layers, d].
    """
    fn = _fast_target_values if cfg.fast else reference_target_values
    res = fn(model, spec, tokenizer, requests, templates, layer=layer, site=site, cfg=cfg, trace=trace)
    if not bool(torch.isfinite(res.v_star).all()):
        where = f"layer {layer}" if isinstance(layer, int) else f"layers {sorted(layer)}"
        raise SolveError(f"the target value at {where} ({site}) is not finite after {res.steps} steps "
                         f"(loss {res.loss}): the model's hidden states or logits are not finite, or "
                         f"the optimisation diverged (v_lr = {cfg.v_lr:g})")
    return res


def _site_layers(model, spec, layer, site: str, loss_layer: int) -> list[int]:
    layers = [layer] if isinstance(layer, int) else sorted(layer)
    if not layers:
        raise ValueError("no injection layer given")
    if len(layers) > 1 and site != "mlp_out":
        raise ValueError(f"several injection layers need site 'mlp_out', got {site!r}")
    if layers[-1] > loss_layer:
        raise ValueError(f"v_loss_layer {loss_layer} is below the injection layer {layers[-1]}")
    for i in layers:
        _site(model, spec, i, site)
    return layers


def _injector(delta, s: int, req_of_row, rows, lookup, first, bases: dict):
    """Forward hook: record the output at the bare prompts' lookup, then add δ[:, s] at the lookup
    of each row in `rows` (`lookup`: per batch row)."""
    def hook(module, args, out):
        o = _out(out)
        bases[s] = o[first, lookup[first]].detach().float()
        o = o.index_put((rows, lookup[rows]), delta[req_of_row, s].to(o.dtype), accumulate=True)
        return (o, *out[1:]) if isinstance(out, tuple) else o
    return hook


@dataclass
class _Picked:
    """One forward's batch: which of its rows get δ and where its requests are scored."""
    replay: SuffixReplay | None
    base: torch.Tensor  # the hidden states entering the replayed layers, per batch row
    lookup: torch.Tensor  # per batch row
    rows: torch.Tensor  # the batch rows of the forward's requests
    req_of_row: torch.Tensor  # ... each one's place among those requests
    first: torch.Tensor  # each request's bare-prompt batch row
    score_rows: torch.Tensor  # targets, then KL
    score_pos: torch.Tensor
    n_targets: int


def _fast_target_values(model, spec, tokenizer, requests, templates, *, layer, site, cfg, trace=False,
                        suffix=True, compact=True):
    loss_layer = cfg.loss_layer(spec)
    layers = _site_layers(model, spec, layer, site, loss_layer)
    p = _problem(tokenizer, requests, templates, cfg.kl_prompt, model_device(model))
    lookup = p.batch.lookup
    start = layers[0] + 1 if site == "block" else layers[0]
    calls, cache, kv = _initial_forward(model, spec, p, layers[0], site, start, loss_layer)
    modules = [(i, spec.layer(model, i)) for i in range(start, loss_layer + 1)]
    replay = None
    if suffix and kv is not None:
        lengths = p.batch.attention_mask.sum(1)
        replay = SuffixReplay.build(model, modules, calls, kv, lookup, lengths, p.batch.input_ids.shape[1])
    if site == "block":  # δ-independent: read once; "mlp_out" sites are read in every forward
        v_block = cache["site"][p.first_row, lookup[p.first_row]].float()[:, None]
    n_t = len(p.tgt_row)
    score_pos = torch.cat([p.tgt_pos, lookup[p.kl_row]])
    if replay is not None:  # positions become slots counted from each row's lookup
        score_pos = score_pos - lookup[torch.cat([p.tgt_row, p.kl_row])]
        lookup = torch.zeros_like(lookup)
    plain_calls = {i: _without(kv, *calls[i]) for i in calls}  # a replay must not grow the cache
    base = cache["site"] if site == "block" else cache["input"]
    if replay is not None:
        base = replay.gather(base)
    picked: dict[tuple, _Picked] = {}  # the active set changes at most b times

    def pick(req) -> _Picked:
        """A suffix replay runs only the rows of `req`; a whole-row replay keeps every row (its
        recorded arguments are not known to be per-row) and adds no δ to the other requests'."""
        key = tuple(req.tolist())
        if key not in picked:
            picked.clear()
            mine = torch.isin(p.req_of_row, req)
            if compact and replay is not None:
                kept = mine.nonzero()[:, 0]
                run, h = replay.rows(kept), base[kept]
            else:
                kept = torch.arange(p.n_rows, device=lookup.device)
                run, h = replay, base
            at = torch.zeros_like(p.req_of_row)
            at[kept] = torch.arange(len(kept), device=lookup.device)
            on = torch.zeros(p.n_req, dtype=torch.bool, device=lookup.device)
            on[req] = True
            place = on.long().cumsum(0) - 1
            own = mine.nonzero()[:, 0]
            tgt = on[p.tgt_req]
            picked[key] = _Picked(run, h, lookup[kept], at[own], place[p.req_of_row[own]], at[p.first_row[req]],
                                  at[torch.cat([p.tgt_row[tgt], p.kl_row[req]])],
                                  torch.cat([score_pos[:n_t][tgt], score_pos[n_t:][req]]), int(tgt.sum()))
        return picked[key]

    def forward(delta, req):
        at = pick(req)
        bases: dict[int, torch.Tensor] = {}
        with ExitStack() as stack:
            if site == "block":
                h = at.base.index_put((at.rows, at.lookup[at.rows]), delta[at.req_of_row, 0].to(at.base.dtype),
                                      accumulate=True)
            else:
                h = at.base
                for s, i in enumerate(layers):
                    hook = _injector(delta, s, at.req_of_row, at.rows, at.lookup, at.first, bases)
                    stack.callback(spec.mlp_out(model, i).register_forward_hook(hook).remove)
            if at.replay is not None:
                h = at.replay.run(h)
            else:
                for i, module in modules:
                    args, kwargs = plain_calls[i]
                    h = _out(module(h, *args, **kwargs))
        lp = torch.log_softmax(logits_at(model, spec, h[at.score_rows, at.score_pos]), -1)
        v_base = v_block[req] if site == "block" else torch.stack([bases[s] for s in range(len(layers))], 1)
        return lp[: at.n_targets], lp[at.n_targets:], v_base

    res = _optimise(forward, p, len(layers), spec.hidden_size, model_device(model), cfg, trace)
    res.mode = "full" if replay is None else "suffix"
    return res


def _without(obj, args, kwargs):
    return (tuple(None if a is obj and obj is not None else a for a in args),
            {k: None if v is obj and obj is not None else v for k, v in kwargs.items()})


@torch.no_grad()
def _initial_forward(model, spec, p: _Problem, layer, site, start, loss_layer):
    """One forward that records what the replays need: the arguments each upper layer got, the
    hidden states at the injection point, and (through a real KV cache) every layer's keys/values."""
    calls: dict[int, tuple] = {}
    cache: dict[str, torch.Tensor] = {}

    def keep_call(i):
        def hook(module, args, kwargs):
            if i == start:
                cache["input"] = args[0]
            calls[i] = (args[1:], kwargs)
        return hook

    def keep_site(module, args, out):
        cache["site"] = _out(out)
        if start > loss_layer:
            raise _Stop

    def stop(module, args, out):
        raise _Stop

    try:
        from transformers import DynamicCache

        kv = DynamicCache(config=model.config)
    except Exception:  # a model without a transformers config: replay full rows
        kv = None
    with ExitStack() as stack:
        for i in range(start, loss_layer + 1):
            h = spec.layer(model, i).register_forward_pre_hook(keep_call(i), with_kwargs=True)
            stack.callback(h.remove)
        stack.callback(_site(model, spec, layer, site).register_forward_hook(keep_site).remove)
        stack.callback(spec.layer(model, loss_layer).register_forward_hook(stop).remove)
        extra = {"past_key_values": kv, "use_cache": True} if kv is not None else {"use_cache": False}
        try:
            model(input_ids=p.batch.input_ids, attention_mask=p.batch.attention_mask, **extra)
        except _Stop:
            pass
    return calls, cache, kv


def reference_target_values(model, spec, tokenizer, requests, templates, *, layer, site, cfg, trace=False):
    """The slow path: per request, a full forward each step with hooks adding δ (float32 loss)."""
    loss_layer = cfg.loss_layer(spec)
    layers = _site_layers(model, spec, layer, site, loss_layer)
    results = []
    for r in requests:
        p = _problem(tokenizer, [r], templates, cfg.kl_prompt, model_device(model))
        lookup = p.batch.lookup
        rows = torch.arange(p.n_rows, device=lookup.device)
        state: dict = {}

        def tap(module, args, out):
            state["h"] = _out(out)

        def forward(delta, req):  # one request: `req` is always [0]
            bases: dict[int, torch.Tensor] = {}
            with ExitStack() as stack:
                for s, i in enumerate(layers):
                    hook = _injector(delta, s, p.req_of_row, rows, lookup, p.first_row, bases)
                    stack.callback(_site(model, spec, i, site).register_forward_hook(hook).remove)
                if loss_layer != spec.num_layers - 1:
                    stack.callback(spec.layer(model, loss_layer).register_forward_hook(tap).remove)
                logits = model(input_ids=p.batch.input_ids, attention_mask=p.batch.attention_mask, use_cache=False).logits
                if loss_layer != spec.num_layers - 1:
                    logits = logits_at(model, spec, state["h"])
            lp = torch.log_softmax(logits.float(), -1)
            v_base = torch.stack([bases[s] for s in range(len(layers))], 1)
            return lp[p.tgt_row, p.tgt_pos], lp[p.kl_row, lookup[p.kl_row]], v_base

        results.append(_optimise(forward, p, len(layers), spec.hidden_size, model_device(model), cfg, trace))
    return _stack(results)


def _stack(results: list[ValueResult]) -> ValueResult:
    cat = lambda name: torch.cat([getattr(r, name) for r in results])  # noqa: E731
    lists = lambda name: [x for r in results for x in getattr(r, name)]  # noqa: E731
    return ValueResult(cat("v_star"), cat("v_init"), cat("delta"), lists("steps"), lists("p_first"),
                       lists("p_last"), lists("loss"), lists("trajectory"))


def value_info(res, layers) -> dict:
    """Provenance of a target-value optimisation for `Delta.info` (shared by every editor)."""
    return {
        "layers": list(layers),
        "steps": res.steps,
        "p_first": res.p_first,
        "p_last": res.p_last,
        "loss": res.loss,
        "delta_norm": res.delta.norm(dim=-1).tolist(),
        "v_init_norm": res.v_init.norm(dim=-1).tolist(),
    }
