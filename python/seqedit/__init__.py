"""seqedit: sequential knowledge editing of language models that measures and limits the damage edits do."""

from ._version import __version__

__all__ = ["EditSession", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import seqedit` stays cheap and free of import cycles with the subpackages.
    if name == "EditSession":
        from .session import EditSession

        return EditSession
    raise AttributeError(f"module 'seqedit' has no attribute {name!r}")
