"""seqedit: sequential knowledge editing of language models that measures and limits the damage edits do."""

__version__ = "0.1.0"
