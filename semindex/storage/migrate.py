"""Upgrading a store made by an older semindex, in place, inside the schema transaction.

Schema 1 kept each document's single embedding on its ``documents`` row. Schema 2 keeps
embeddings on ``chunks`` rows (a document has one or more). The upgrade gives every
existing document one chunk spanning its whole text, **with the chunk id equal to the
document's old vector id**, so the vector checkpoint, the change log and SQLite's
keyword tables (all keyed by that id) stay valid and nothing is re-encoded or rebuilt.
It runs in the same transaction that creates the new table, under the schema lock, so a
crash leaves the old schema or the new one, and two processes opening the store at once
upgrade it once.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import schema as s

log = logging.getLogger(__name__)


def upgrade(conn: Connection) -> None:
    """Bring a schema-1 store to schema 2 (a no-op on a store that is already there)."""
    cols = {c["name"] for c in sa.inspect(conn).get_columns("documents")}
    if "embedding" not in cols:
        return
    n = conn.exec_driver_sql(
        "INSERT INTO chunks (id, collection_id, doc_vid, ordinal, start_char, end_char, embedding) "
        "SELECT vid, collection_id, vid, 0, 0, length(text), embedding FROM documents"
    ).rowcount
    if conn.dialect.name == "postgresql":
        # later chunks must not reuse the ids given explicitly above
        conn.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('chunks', 'id'), "
            "GREATEST((SELECT max(id) FROM chunks), (SELECT last_value FROM documents_vid_seq), 1))"
        )
        fts = conn.exec_driver_sql("SELECT to_regclass('semindex_fts') IS NOT NULL").scalar()
        if fts:
            conn.exec_driver_sql("ALTER TABLE semindex_fts DROP CONSTRAINT IF EXISTS semindex_fts_vid_fkey")
            conn.exec_driver_sql(
                "ALTER TABLE semindex_fts ADD CONSTRAINT semindex_fts_vid_fkey "
                "FOREIGN KEY (vid) REFERENCES chunks(id) ON DELETE CASCADE"
            )
    conn.exec_driver_sql("ALTER TABLE documents DROP COLUMN embedding")
    conn.execute(
        sa.update(s.meta_table).where(s.meta_table.c.key == "schema_version").values(value=str(s.SCHEMA_VERSION))
    )
    log.warning("upgraded the store to schema %d: %d documents now have one chunk each", s.SCHEMA_VERSION, n)
