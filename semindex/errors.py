"""One exception hierarchy for semindex.

Every error a user can cause is a :class:`SemindexError`. The edges convert
them and nothing else does: the CLI prints ``str(err)`` on one line and exits
with ``err.exit_code``; the HTTP API answers ``err.http_status`` with
``{"error": err.code, "detail": str(err)}``. Anything that is *not* a
SemindexError is a bug and is allowed to surface as one.

    SemindexError
    ├── InvalidInputError          bad values from the caller (422)
    │   ├── ResponseTooLargeError  an answer over the response budget (413): fewer hits, or ids only
    │   ├── FilterError            a filter that does not parse or type-check
    │   │   └── InvalidFilterFieldError  a filter key that is not a metadata path (also an InvalidNameError)
    │   ├── InvalidNameError       collection names, metadata keys
    │   ├── DimensionMismatchError vectors of the wrong size
    │   └── ReadError              a source file or record that cannot be read (file:line)
    ├── NotFoundError              (404)
    │   ├── CollectionNotFoundError
    │   └── DocumentNotFoundError
    ├── ConflictError              (409)
    │   ├── CollectionExistsError
    │   └── ModelMismatchError     a collection opened with another model than it was built with
    ├── ConfigError                options that cannot work together, missing extras
    │   ├── IndexSpecError         an index spec that can never work or needs unbounded memory (422)
    │   ├── TruncationError        --dimensions for a model not trained for it, or unlike the collection's (422)
    │   └── ModelUnavailableError  a collection's model cannot be loaded on this server (503)
    ├── DeadlineExceededError      a request past the server's time limit (504)
    └── StorageError               the store itself (disk full, unreadable index, drift) (500/503)
        ├── ConsistencyError       SQL and the vector index disagree
        └── ShuttingDownError      the server is draining before it stops (503)
"""

from __future__ import annotations


class SemindexError(Exception):
    """Base of every error semindex raises on purpose."""

    code = "semindex_error"
    http_status = 400
    exit_code = 1


class InvalidInputError(SemindexError):
    code = "invalid_input"
    http_status = 422
    exit_code = 2


class ResponseTooLargeError(InvalidInputError):
    """A search whose answer would exceed the response budget (hits x their text): ask for fewer
    hits or queries, or for ids only (``include_text: false``)."""

    code = "response_too_large"
    http_status = 413


class FilterError(InvalidInputError):
    code = "invalid_filter"


class InvalidNameError(InvalidInputError):
    code = "invalid_name"


class InvalidFilterFieldError(FilterError, InvalidNameError):
    """A filter field key that is not a valid metadata path.

    It is both kinds of error: the filter is invalid (``code`` stays
    ``invalid_filter``) and the offending thing is a name, so handlers that
    catch either base class see it.
    """

    code = FilterError.code


class DimensionMismatchError(InvalidInputError):
    code = "dimension_mismatch"


class ReadError(InvalidInputError):
    """A source record or file that cannot be read; carries where it happened."""

    code = "read_error"

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = message
        where = source or ""
        if source is not None and line is not None:
            where = f"{source}:{line}"
        super().__init__(f"{where}: {message}" if where else message)


class NotFoundError(SemindexError):
    code = "not_found"
    http_status = 404
    exit_code = 3


class CollectionNotFoundError(NotFoundError):
    code = "collection_not_found"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"collection {name!r} does not exist")


class DocumentNotFoundError(NotFoundError):
    code = "document_not_found"

    def __init__(self, doc_id: str, collection: str | None = None) -> None:
        self.doc_id = doc_id
        self.collection = collection
        where = f" in collection {collection!r}" if collection else ""
        super().__init__(f"document {doc_id!r} not found{where}")


class ConflictError(SemindexError):
    code = "conflict"
    http_status = 409
    exit_code = 4


class CollectionExistsError(ConflictError):
    code = "collection_exists"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"collection {name!r} already exists")


class ModelMismatchError(ConflictError):
    code = "model_mismatch"


class ConfigError(SemindexError):
    code = "config_error"
    exit_code = 2


class IndexSpecError(ConfigError):
    """An index spec that can never work (IVF0, HNSW-1, NSG) or asks for unbounded memory:
    refused at creation or reindex, before anything is stored."""

    code = "invalid_index"
    http_status = 422


class TruncationError(ConfigError):
    """A ``dimensions`` (Matryoshka truncation) that cannot be honoured: the model was not trained
    for truncation, N is out of range, or an existing collection holds vectors of another size.
    Refused before anything is stored, so vectors of different sizes never mix."""

    code = "truncation_unsupported"
    http_status = 422


class StorageError(SemindexError):
    code = "storage_error"
    http_status = 503
    exit_code = 5


class ConsistencyError(StorageError):
    code = "consistency_error"
    http_status = 500
    exit_code = 6


class ModelUnavailableError(ConfigError):
    """A collection's model cannot be loaded on this server (its folder was removed, say): that
    collection answers 503 with the reason; the others are served. A ConfigError (exit 2), as
    before, for callers that catch that."""

    code = "model_unavailable"
    http_status = 503


class DeadlineExceededError(SemindexError):
    """A request that ran past the server's time limit (``serve --request-timeout``). Raised
    only before a write has started or between slices of a search, so nothing is half applied:
    a write that had begun finishes and is answered; one that had not is never started."""

    code = "deadline_exceeded"
    http_status = 504


class ShuttingDownError(StorageError):
    """Work refused because the server has begun a graceful shutdown; retry on another server."""

    code = "shutting_down"
    http_status = 503


__all__ = [
    "CollectionExistsError",
    "CollectionNotFoundError",
    "ConfigError",
    "ConflictError",
    "ConsistencyError",
    "DeadlineExceededError",
    "DimensionMismatchError",
    "DocumentNotFoundError",
    "FilterError",
    "IndexSpecError",
    "InvalidFilterFieldError",
    "InvalidInputError",
    "InvalidNameError",
    "ModelMismatchError",
    "ModelUnavailableError",
    "NotFoundError",
    "ReadError",
    "ResponseTooLargeError",
    "SemindexError",
    "ShuttingDownError",
    "StorageError",
    "TruncationError",
]
