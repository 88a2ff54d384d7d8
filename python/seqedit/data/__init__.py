"""Edit requests: the record type, validation, loaders for the editing benchmarks, packaged data.

See `request` (record and text normalisation), `validate` (the rules), `schemas` (how each
benchmark's fields map onto a request), `loaders` (names and files) and `files/README.md`
(provenance and licences of the packaged data).
"""

from .corpus import corpus
from .loaders import available, load
from .request import EditRequest, Missing
from .validate import Problem, RequestValidationError, validate

__all__ = [
    "EditRequest",
    "Missing",
    "Problem",
    "RequestValidationError",
    "available",
    "corpus",
    "load",
    "validate",
]
