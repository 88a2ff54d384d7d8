"""seqedit: sequential knowledge editing of language models that measures and limits the damage edits do."""

__version__ = "0.1.0"

__all__ = ["EditSession", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import seqedit` stays cheap and free of import cycles with the subpackages.
    if name == "EditSession":
        from .session import EditSession

        return EditSession
    raise AttributeError(f"module 'seqedit' has no attribute {name!r}")
