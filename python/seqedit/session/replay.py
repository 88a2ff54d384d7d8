"""Rebuilding a session on a fresh base model: identity checks and replay of the ledger."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch

from ..editors.base import Delta, LayerDelta
from .._version import __version__
from .hashing import canonical_json, config_dict, fingerprint_mismatch, jsonable
from .ledger import Ledger, LedgerError
from .moments import SecondMoments

log = logging.getLogger("seqedit.session")

_IDENTITY = ("class", "arch", "num_layers", "hidden_size", "mlp_hidden_size")
REPLAY_CHUNK = 64  # deltas per fused update: bounds the memory of the stacked factors


def declared_layers(editor: Any) -> list[int]:
    """The layers an editor says it edits (`editor.layers`, or `config.layers`/`config.layer`);
    [] when it does not say. Used to fingerprint the base weights before the first edit and to
    compute every layer's key statistics in one pass."""
    for holder in (editor, getattr(editor, "config", None)):
        for attr in ("layers", "layer"):
            value = getattr(holder, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return [value]
            if isinstance(value, (list, tuple)) and value and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                return sorted(set(value))
    return []


def _plain(value: Any) -> bool:
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def portable_memo(memo: dict, recorded: dict[str, Any]) -> list[list[Any]]:
    """Entries of `ctx.memo` made only of tuples and scalars that the ledger lacks yet.

    Editors memoise things they derive from the model at the first edit (MEMIT's context
    templates are sampled from it); after a resume the model is the replayed one, so such
    entries are restored from the ledger instead of re-derived. Entries holding tensors are
    derived from inputs that survive a resume (key statistics) and are left out.
    """
    return [[key, value] for key, value in memo.items()
            if _plain(key) and _plain(value) and canonical_json(key) not in recorded]


def restore_memo(memo: dict, recorded: dict[str, Any]) -> None:
    for key, value in recorded.values():
        memo[_tupled(key)] = _tupled(value)


def model_identity(model: torch.nn.Module, spec: Any) -> dict[str, Any]:
    return {"class": type(model).__name__,
            "name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None),
            "arch": spec.arch, "num_layers": spec.num_layers, "hidden_size": spec.hidden_size,
            "mlp_hidden_size": spec.mlp_hidden_size}


def check_same_editor(directory: Any, manifest: dict, method: str, config: Any) -> None:
    """Continuing a ledger with other hyperparameters would mix two experiments in one run.
    The seqedit version may differ (every line records its own); method and config may not.
    A field the recorded config lacks was added by a later seqedit; it matches while it holds its
    default, which by rule reproduces what that field's absence meant."""
    now = config_dict(config)
    recorded = {**_defaults(config, set(now) - set(manifest["config"])), **manifest["config"]}
    if method != manifest["method"] or now != recorded:
        fields = sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))
        raise LedgerError(f"{directory} was written by {manifest['method']!r} with another config "
                          f"than this {method!r} editor's (differing: {fields}); resume with the "
                          "recorded config (method=None rebuilds it)")
    if manifest["seqedit_version"] != __version__:
        log.warning("%s was started with seqedit %s, continuing with %s", directory,
                    manifest["seqedit_version"], __version__)


def _defaults(config: Any, names: set[str]) -> dict[str, Any]:
    """The JSON form of the dataclass defaults of `names` in `config` (those that have one)."""
    if not dataclasses.is_dataclass(config):
        return {}
    out = {}
    for f in dataclasses.fields(config):
        if f.name not in names:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = jsonable(f.default_factory())
    return out


def check_base_model(model: torch.nn.Module, spec: Any, manifest: dict[str, Any],
                     fingerprints: dict[str, dict[str, Any]]) -> None:
    """Refuse a model that is not the session's base model, naming every difference."""
    recorded, now = manifest["model"], model_identity(model, spec)
    problems = [f"{k}: {now[k]!r}, the session was started on {recorded[k]!r}"
                for k in _IDENTITY if recorded.get(k) != now[k]]
    if not problems:
        for name, fingerprint in sorted(fingerprints.items()):
            try:
                param = model.get_parameter(name)
            except AttributeError:
                problems.append(f"{name}: not a parameter of this model")
                continue
            why = fingerprint_mismatch(name, fingerprint, param)
            if why:
                problems.append(why)
    if problems:
        raise LedgerError(
            "this model is not the base model the session was started from (pass a freshly "
            "loaded, unedited copy; the ledger replays the edits onto it):\n  "
            + "\n  ".join(problems))


def replay(ledger: Ledger, editor: Any, moments: SecondMoments,
           apply: Callable[[Delta, float], Any], *, progress: bool = True) -> None:
    """Re-apply every live edit in ledger order, then `editor.commit` each, as the original run
    did. Statistics the run computed are computed first: they must see the base weights."""
    from tqdm.auto import tqdm

    if moments.computes and ledger.stats_layers:
        moments.prefetch(ledger.stats_layers)
    entries = ledger.live_entries()
    if not entries:
        return
    log.info("replaying %d live edit(s) from %s", len(entries), ledger.root)
    with tqdm(total=len(entries), unit="edit", desc="replay", disable=not progress) as bar:
        for start in range(0, len(entries), REPLAY_CHUNK):
            deltas = [ledger.load_delta(e) for e in entries[start:start + REPLAY_CHUNK]]
            stacked: dict[str, tuple[bool, list, list]] = {}
            for delta in deltas:
                for d in delta.layers:
                    stacked.setdefault(d.name, (d.transposed, [], []))
                    stacked[d.name][1].append(d.u)
                    stacked[d.name][2].append(d.v)
            # Σ U_i V_iᵀ = [U_1..U_n][V_1..V_n]ᵀ: one fused update per chunk, not one per edit.
            apply(Delta("replay", [LayerDelta(name, torch.cat(u, 1), torch.cat(v, 1), t)
                                   for name, (t, u, v) in stacked.items()]), 1.0)
            for delta in deltas:
                editor.commit(delta)
            bar.update(len(deltas))
