"""What `EditSession.edit` returns, and the session's own errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

APPLIED, REFUSED, SKIPPED = "applied", "refused", "skipped"


@dataclass(frozen=True)
class EditResult:
    """The outcome for one request; `edit()` returns one per request given, in order.

    status: "applied" (in the model and the ledger), "refused" (the editor's delta was rejected;
      weights untouched; `reason` says why; the ledger has the refusal), or "skipped" (the ledger
      already had this exact request; `edit_id` names the step that processed it).
    pre/post: {"new": P(target_new), "true": P(target_true) or None, "new_argmax": bool} by
      teacher forcing on the filled prompt, P being the per-token geometric mean; None when not
      measured. success: see `seqedit.metrics.probe.success`; None when not measured.
    timings: seconds per phase of the step (shared by all requests of a batch).
    evaluations: the after-each results of the session's evaluators for this step, by
      evaluator name (`seqedit.metrics.EvalResult`; shared by all requests of a batch).
    """

    edit_id: int
    case_id: Any
    status: str
    success: bool | None = None
    pre: dict[str, Any] | None = None
    post: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    request: Any = field(default=None, repr=False)
    evaluations: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def applied(self) -> bool:
        return self.status == APPLIED


class EditRefused(RuntimeError):
    """Raised by `edit(..., strict=True)` after a refusal was recorded; earlier steps stay."""

    def __init__(self, edit_id: int, reason: str, results: list[EditResult]) -> None:
        super().__init__(f"edit {edit_id} refused: {reason} (weights untouched; the refusal is "
                         "in the ledger)")
        self.edit_id, self.reason, self.results = edit_id, reason, results


class RollbackError(ValueError):
    """The edit cannot be rolled back (unknown, refused, or already rolled back); nothing changed."""
