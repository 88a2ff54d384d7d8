"""The version has two homes (pyproject.toml for packaging, seqedit/_version.py at run time)."""
from __future__ import annotations

import re
from pathlib import Path

import seqedit
from seqedit._version import __version__

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_and_package_agree_on_the_version():
    # A regex rather than tomllib, which Python 3.10 lacks.
    project = PYPROJECT.read_text(encoding="utf-8").split("[project]", 1)[1].split("\n[", 1)[0]
    declared = re.search(r'^version\s*=\s*"([^"]+)"', project, re.M)
    assert declared is not None, "pyproject.toml [project] has no static version"
    assert declared.group(1) == __version__
    assert seqedit.__version__ == __version__
