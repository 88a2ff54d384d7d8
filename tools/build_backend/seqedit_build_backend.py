"""seqedit's PEP 517 build backend: scikit-build-core's hooks, or a clear error without it.

seqedit is built with `pip install --no-build-isolation .` so that the extension compiles against
the torch already installed (see pyproject.toml). Without build isolation pip does not install
`[build-system].requires`, and a missing scikit-build-core used to surface as pip's raw
"BackendUnavailable: Cannot import 'scikit_build_core.build'" traceback. This in-tree wrapper
(pyproject.toml: `backend-path = ["tools/build_backend"]`) re-exports scikit-build-core's hooks
unchanged and otherwise stops with a message that says what to install.
"""

# The pin in ci/requirements-cpu.txt; tests/test_setup.py checks that the two agree.
SCIKIT_BUILD_CORE_PIN = "scikit-build-core==1.1.0"

MISSING_BACKEND_MESSAGE = f"""
seqedit's build backend, scikit-build-core, is not installed in this environment.
`pip install --no-build-isolation` builds with the packages already installed, so install it
first:

    pip install {SCIKIT_BUILD_CORE_PIN}

or use `make env`, which sets up the whole environment (torch, scikit-build-core, CMake, seqedit).
"""

try:
    import scikit_build_core.build as _backend
except ImportError as exc:
    # SystemExit, not ImportError: pip reports a backend's ImportError as "BackendUnavailable"
    # with a traceback that buries the text, whereas a hook process that exits shows its stderr
    # as-is under "[N lines of output]".
    raise SystemExit(MISSING_BACKEND_MESSAGE) from exc

# Re-export exactly the hooks this scikit-build-core provides: pip probes the optional ones
# (prepare_metadata_*, build_editable) with hasattr, so none is defined here that it lacks.
__all__ = list(_backend.__all__)
globals().update({name: getattr(_backend, name) for name in __all__})
