"""Sequential editing sessions: apply, log, roll back, resume, save and export edits.

`EditSession` is the entry point (`core`); `ledger` defines the on-disk format, `evaluation` runs
the evaluators on schedule (`base_weights` keeps W0 for them), `replay` how a directory is rebuilt
on a base model, `reader` the read-only view of a directory (`read_run`), `peft_export` the LoRA
adapter export.
"""
from .core import EditSession
from .evaluation import EvaluationStop
from .ledger import LedgerError
from .reader import Run, read_run
from .results import EditRefused, EditResult, RollbackError

__all__ = ["EditSession", "EditResult", "EditRefused", "EvaluationStop", "LedgerError",
           "RollbackError", "Run", "read_run"]
