"""What the guard tests share: a tiny corpus for key statistics, fast value settings, requests."""
from __future__ import annotations

from seqedit.data import EditRequest

DOCS = [f"Document {i}: the river flows north through the old city where the king was born. "
        * (i % 5 + 1) for i in range(60)]
FAST = {"v_num_grad_steps": 6, "context_template_starts": ("The", "I"),
        "context_template_length": 4}
CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Oslo", "Lima", "Cairo"]


def requests(n: int) -> list[EditRequest]:
    return [EditRequest(prompt="The capital of {} is", subject=f"Country {i}",
                        target_new=CITIES[i % 8], target_true=CITIES[(i + 3) % 8], case_id=i)
            for i in range(n)]


def stats_options(tmp_path) -> dict:
    return {"corpus": DOCS, "max_tokens": 3000, "cache_dir": tmp_path / "cache", "progress": False}
