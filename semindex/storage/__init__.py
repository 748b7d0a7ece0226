"""Everything that persists: SQL rows (the truth), the derived vector and keyword indexes.

The modules, each with one job:

* ``engine``     - database engine, SQLite pragmas, schema creation;
* ``schema``     - the SQLAlchemy tables;
* ``records``    - the row types passed in and out, their byte encoding, the WriteHook protocol;
* ``rows``       - read queries over one collection's rows (documents and chunks);
* ``writes``     - the rows one write transaction changes; ``migrate`` - upgrading older stores;
* ``store``      - `Storage` / `CollectionStorage`: writes, replay, search, reindex;
* ``vectors/``   - the FAISS index families behind one interface;
* ``autoindex``  - index choice by size and memory budget, training, recall tuning;
* ``checkpoint`` - the index file + manifest on disk; ``atomic`` - crash-safe file writes;
* ``exact``      - exact top-k scoring; ``check`` - the SQL-vs-index consistency report;
* ``keyword``    - BM25 full-text index (a write hook); ``filters`` - filter JSON -> SQL;
* ``failures``   - driver errors and a full disk mapped to semindex errors.

Nothing here knows about models, HTTP or the command line (the layering contract in
pyproject.toml checks it). Callers above use the names re-exported here.
"""

from .check import CheckReport
from .checkpoint import format_params
from .engine import store_exists
from .filters import parse_filter_json
from .keyword import KeywordIndex
from .records import (
    NAME_RE,
    ChunkRef,
    CollectionRecord,
    DocWrite,
    StoredDoc,
    WriteHook,
    WriteResult,
    validate_collection_name,
)
from .store import CollectionStorage, Storage
from .vectors import parse_bytes

__all__ = [
    "NAME_RE",
    "CheckReport",
    "ChunkRef",
    "CollectionRecord",
    "CollectionStorage",
    "DocWrite",
    "KeywordIndex",
    "Storage",
    "StoredDoc",
    "WriteHook",
    "WriteResult",
    "format_params",
    "parse_bytes",
    "parse_filter_json",
    "store_exists",
    "validate_collection_name",
]
