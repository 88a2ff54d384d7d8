"""A tiny model saved to disk, a corpus file and a run-config writer for the CLI tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from seqedit.models import tiny

DOCS = [f"Report {i}: ships leave the harbour at dawn and the market opens after them. " * (i % 4 + 1)
        for i in range(60)]
FAST = {"layers": [0, 1], "v_num_grad_steps": 6, "context_template_starts": ["The"],
        "context_template_length": 3}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-model")
    model, tok = tiny("llama", seed=0, max_positions=1024)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    (root / "docs.txt").write_text("\n".join(DOCS))
    return root


@pytest.fixture
def write_config(model_dir, tmp_path, monkeypatch):
    """`write_config(**overrides) -> path` of a run config for the tiny model in tmp_path."""
    monkeypatch.setenv("SEQEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEQEDIT_PROGRESS", "lines")

    def write(name: str = "run.yaml", **overrides) -> Path:
        cfg = {"output": "out", "model": str(model_dir / "tiny"), "method": "memit",
               "method_options": dict(FAST), "data": {"edits": 3},
               "stats": {"max_tokens": 2000, "corpus": str(model_dir / "docs.txt")},
               "evaluators": {"editing": {"fluency_prompts": 0}, "health": {}},
               "eval_every": 2, "threads": 1}
        cfg.update(overrides)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write
