"""Rebuilding a session on a fresh base model: identity checks and replay of the ledger."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch

from ..editors.base import Delta
from .._progress import Progress
from .._version import __version__
from .hashing import canonical_json, config_dict, config_hash, fingerprint_mismatch, jsonable
from .integrity import fingerprint_problems, model_fingerprint
from .ledger import Ledger, LedgerError
from .moments import SecondMoments

log = logging.getLogger("seqedit.session")

_IDENTITY = ("class", "arch", "num_layers", "hidden_size", "mlp_hidden_size")


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


def check_config_hashes(ledger: Ledger, method: str, config: Any) -> None:
    """Every edit line's config_hash must be one the manifest's editor config gives (under the
    seqedit version that wrote the line; with fields a later version added at their defaults):
    a line from another experiment spliced in is refused."""
    recorded = ledger.manifest["config"]
    allowed: dict[str, set[str]] = {}
    for entry in ledger.entries.values():
        version = entry.seqedit_version or __version__
        if version not in allowed:
            allowed[version] = {config_hash(method, recorded, version),
                                config_hash(method, config, version),
                                ledger.manifest.get("config_hash")}
        if entry.config_hash not in allowed[version]:
            raise LedgerError(f"{ledger.root}: edit {entry.edit_id} was made with config hash "
                              f"{entry.config_hash!r}, which is not this session's editor config "
                              "(the line comes from another run)")


def check_base_model(model: torch.nn.Module, spec: Any, manifest: dict[str, Any],
                     fingerprints: dict[str, dict[str, Any]]) -> None:
    """Refuse a model that is not the session's base model, naming every difference: identity,
    the edited weights (dtype, shape, bytes), then every parameter and buffer."""
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
    if not problems and "model_fingerprint" in manifest:
        problems = fingerprint_problems(manifest["model_fingerprint"], model_fingerprint(model))
    if problems:
        raise LedgerError(
            "this model is not the base model the session was started from (pass a freshly "
            "loaded, unedited copy; the ledger replays the edits onto it):\n  "
            + "\n  ".join(problems[:20])
            + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))


def replay(ledger: Ledger, editor: Any, guards: list[Any], moments: SecondMoments,
           apply: Callable[[Delta, float], Any], *, progress: bool = True) -> None:
    """Redo the ledger's weight history step by step, as the run made it: every applied edit
    (weights, then `editor.commit`, then each guard's) and every rollback (its recorded
    correction, or the edit subtracted; then the reverts), in ledger order, one fused update
    per step. The same additions in the same order and grouping give
    the same bits, so the rebuilt model equals the one the run had (an edit later rolled back
    is applied and undone, as it was: W + ΔW − ΔW is not W in floating point). Statistics the
    run computed are computed first: they must see the base weights."""
    if moments.computes and ledger.stats_layers:
        moments.prefetch(ledger.stats_layers)
    history = ledger.weight_history()
    if not history:
        return
    log.info("replaying %d weight change(s) from %s", len(history), ledger.root)
    with Progress(len(history), "replay", "step", enabled=progress) as bar:
        for kind, edit_id in history:
            _replay_one(ledger, kind, edit_id, apply, editor, guards)
            bar.update()


def _replay_one(ledger: Ledger, kind: str, edit_id: int, apply, editor, guards) -> None:
    delta = ledger.load_delta(ledger.entries[edit_id])
    if kind == "edit":
        apply(delta, 1.0)
        editor.commit(delta)
        for guard in guards:
            guard.commit(delta)
        return
    undo = ledger.load_undo(edit_id)
    if undo is None:
        apply(delta, -1.0)
    else:
        apply(undo, 1.0)
    editor.revert(delta)
    for guard in reversed(guards):
        guard.revert(delta, undo)
