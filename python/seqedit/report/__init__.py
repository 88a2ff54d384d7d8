"""Reports of edit runs: PNG figures, a Markdown summary and a self-contained HTML page.

    from seqedit import report
    paths = report.write(["runs/memit", "runs/memit+d4s"], "out/compare")
    series = report.summarise("runs/memit")  # JSON-able series against live edits

Reading is read-only and lock-free (`seqedit.session.read_run`), so a run can be reported on
while it is still being written. Drawing needs matplotlib (`pip install 'seqedit[report]'`); it
is imported only when a figure is drawn.
"""
from .build import write, write_summaries
from .series import ReportError, series_key, session_dir, summarise

__all__ = ["ReportError", "series_key", "session_dir", "summarise", "write", "write_summaries"]
