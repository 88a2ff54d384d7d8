"""The set-up path: the in-tree build backend's message and tools/devenv.py's venv key/marker logic.

No venv is built and nothing is installed here; `make env` itself is exercised by .ci/run.
"""

import importlib.abc
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "tools" / "build_backend" / "seqedit_build_backend.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def devenv():
    return _load(ROOT / "tools" / "devenv.py", "_seqedit_devenv_under_test")


class _HideScikitBuildCore(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "scikit_build_core" or fullname.startswith("scikit_build_core."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def test_backend_without_scikit_build_core_says_what_to_install(monkeypatch):
    for name in list(sys.modules):
        if name == "scikit_build_core" or name.startswith("scikit_build_core."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_HideScikitBuildCore(), *sys.meta_path])
    with pytest.raises(SystemExit) as info:
        _load(BACKEND, "_seqedit_backend_hidden")
    msg = str(info.value.code)
    assert "pip install scikit-build-core==1.1.0" in msg
    assert "make env" in msg
    assert "--no-build-isolation" in msg


def test_backend_reexports_scikit_build_core_hooks():
    skbuild = pytest.importorskip("scikit_build_core.build")
    backend = _load(BACKEND, "_seqedit_backend_present")
    assert set(backend.__all__) == set(skbuild.__all__)
    for hook in ("build_wheel", "build_sdist", "prepare_metadata_for_build_wheel"):
        assert getattr(backend, hook) is getattr(skbuild, hook)


def test_backend_pin_matches_requirements():
    # The message must name the version the pinned environment uses.
    backend_src = BACKEND.read_text()
    pins = (ROOT / "ci" / "requirements-cpu.txt").read_text().split()
    skb = [p for p in pins if p.startswith("scikit-build-core==")]
    assert skb and f'SCIKIT_BUILD_CORE_PIN = "{skb[0]}"' in backend_src


def test_pyproject_uses_the_wrapper():
    tomllib = pytest.importorskip("tomllib")
    bs = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert bs["build-backend"] == BACKEND.stem
    assert [ROOT / p for p in bs["backend-path"]] == [BACKEND.parent]
    assert bs["requires"] == ["scikit-build-core>=0.10"]


def _copy_pins(devenv, dst: Path):
    for rel, _ in devenv.PIN_FILES:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, dst / rel)


def test_env_key_changes_with_pins_and_python(devenv, tmp_path):
    _copy_pins(devenv, tmp_path)
    key = devenv.env_key(tmp_path, "3.11.7 (main)", "/usr/bin/python3.11")
    assert key == devenv.env_key(tmp_path, "3.11.7 (main)", "/usr/bin/python3.11")
    assert key != devenv.env_key(tmp_path, "3.12.1 (main)", "/usr/bin/python3.11")
    assert key != devenv.env_key(tmp_path, "3.11.7 (main)", "/opt/python/bin/python3.11")
    for rel, _ in devenv.PIN_FILES:
        pin_file = tmp_path / rel
        original = pin_file.read_text()
        pin_file.write_text(original.replace("==", "==9", 1))
        assert devenv.env_key(tmp_path, "3.11.7 (main)", "/usr/bin/python3.11") != key, rel
        pin_file.write_text(original)
    assert devenv.env_key(tmp_path, "3.11.7 (main)", "/usr/bin/python3.11") == key


def test_up_to_date_venv_is_left_alone(devenv, tmp_path, monkeypatch, capsys):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("")
    (venv / devenv.MARKER).write_text(devenv.env_key() + "\n")

    def no_run(cmd, **kw):
        raise AssertionError(f"ran {cmd}")

    monkeypatch.setattr(devenv, "_run", no_run)
    devenv.ensure_venv(str(venv))
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("marker", [None, "0123456789abcdef"])
def test_stale_or_incomplete_venv_is_rebuilt_and_marked_last(devenv, tmp_path, monkeypatch,
                                                              marker):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text("")
    (venv / "leftover").write_text("")
    if marker:
        (venv / devenv.MARKER).write_text(marker)
    calls = []

    def fake_run(cmd, **kw):
        assert not (venv / devenv.MARKER).exists(), "marker written before the install finished"
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            os.mkdir(cmd[3])

    monkeypatch.setattr(devenv, "_run", fake_run)
    devenv.ensure_venv(str(venv))
    assert not (venv / "leftover").exists()  # rebuilt from scratch, not patched over
    assert calls[0] == [sys.executable, "-m", "venv", str(venv)]
    (cpu, _), (models, _) = devenv.PIN_FILES
    assert calls[1][-2:] == ["-r", str(ROOT / cpu)] and "--no-deps" not in calls[1]
    assert calls[2][-3:] == ["--no-deps", "-r", str(ROOT / models)]
    assert (venv / devenv.MARKER).read_text().strip() == devenv.env_key()


def test_clear_messages_for_old_python_and_missing_compiler(devenv, monkeypatch):
    monkeypatch.setattr(sys, "version_info", (3, 9, 18, "final", 0))
    with pytest.raises(devenv.SetupError, match=r"needs Python >= 3\.10.*make PYTHON="):
        devenv.check_python()
    monkeypatch.setenv("CXX", "no-such-compiler-xyz -O2")
    with pytest.raises(devenv.SetupError, match="no-such-compiler-xyz is not an executable"):
        devenv.check_compiler()
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(devenv.SetupError, match=r"No C\+\+ compiler found.*install g\+\+"):
        devenv.check_compiler()


def test_refuses_to_delete_a_directory_that_is_not_a_venv(devenv, tmp_path):
    (tmp_path / "precious").write_text("")
    with pytest.raises(devenv.SetupError, match="not a virtual environment"):
        devenv.ensure_venv(str(tmp_path))
    assert (tmp_path / "precious").exists()


def test_other_pins_make_their_own_venv(devenv, tmp_path, monkeypatch, capsys):
    """CI's CUDA venv: `venv --pins ci/requirements-cuda.txt` installs only those pins, and its key
    is theirs (an up-to-date CUDA venv is not rebuilt for the CPU pins, nor the other way round)."""
    venv = tmp_path / "venv"
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            os.mkdir(cmd[3])

    monkeypatch.setattr(devenv, "_run", fake_run)
    assert devenv.main(["venv", "--venv", str(venv), "--pins", "ci/requirements-cuda.txt",
                        "--pins", "ci/requirements-models.txt:nodeps"]) == 0
    cuda = (("ci/requirements-cuda.txt", False), ("ci/requirements-models.txt", True))
    assert [c[-3:] for c in calls[1:]] == [["-q", "-r", str(ROOT / cuda[0][0])],
                                          ["--no-deps", "-r", str(ROOT / cuda[1][0])]]
    key = (venv / devenv.MARKER).read_text().strip()
    assert key == devenv.env_key(pin_files=cuda) != devenv.env_key()
    capsys.readouterr()
    assert devenv.main(["key", "--pins", "ci/requirements-cuda.txt",
                        "--pins", "ci/requirements-models.txt:nodeps"]) == 0
    assert capsys.readouterr().out.strip() == key
