"""SQL tables: the source of truth.

Only portable SQLAlchemy Core constructs are used so the same tables work on
SQLite and PostgreSQL. Three ideas carry the design:

* a document row holds the user's full text, metadata and content hash; its
  chunks (one for a document that fits the model's window) hold the character
  span ``(start_char, end_char)`` of the text they cover and their embedding
  (float32 bytes), so any vector index can be rebuilt from SQL without
  re-encoding. The vector index knows chunks by ``chunks.id``;
* ``collections.version`` is bumped by every write transaction *first*, which
  takes the collection's write lock (a row lock on PostgreSQL, the database
  write lock on SQLite) and gives a per-collection, gap-free commit order;
* ``changes`` records, per version, which vector (chunk) ids a transaction touched,
  so a FAISS checkpoint at version V is brought up to date by replaying the
  rows with ``version > V``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

SCHEMA_VERSION = 2  # 2: embeddings moved from documents to chunks (storage/migrate.py)

# SQLite only gives an auto-incrementing rowid alias to INTEGER PRIMARY KEY.
BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata_obj = sa.MetaData()

meta_table = sa.Table(
    "semindex_meta",
    metadata_obj,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

collections = sa.Table(
    "collections",
    metadata_obj,
    sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("model", sa.String(1024), nullable=True),
    sa.Column("dimension", sa.Integer, nullable=False),
    sa.Column("metric", sa.String(16), nullable=False),
    sa.Column("normalize", sa.Boolean, nullable=False),
    sa.Column("index_spec", sa.String(256), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("config", JSONType, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,
)

documents = sa.Table(
    "documents",
    metadata_obj,
    # vid: the document's row id, stable across upserts (its chunks point at it).
    sa.Column("vid", BigIntPK, primary_key=True, autoincrement=True),
    sa.Column(
        "collection_id",
        sa.BigInteger,
        sa.ForeignKey("collections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("doc_id", sa.String(512), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("title", sa.Text, nullable=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("collection_id", "doc_id", name="uq_documents_collection_doc"),
    sqlite_autoincrement=True,
)

chunks = sa.Table(
    "chunks",
    metadata_obj,
    # id: what the vector index and the keyword index know the chunk by.
    sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
    sa.Column("collection_id", sa.BigInteger, nullable=False),
    sa.Column("doc_vid", sa.BigInteger, sa.ForeignKey("documents.vid", ondelete="CASCADE"), nullable=False),
    sa.Column("ordinal", sa.Integer, nullable=False),
    sa.Column("start_char", sa.Integer, nullable=False),
    sa.Column("end_char", sa.Integer, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Index("ix_chunks_doc", "doc_vid", "ordinal"),
    sa.Index("ix_chunks_collection", "collection_id"),
    sqlite_autoincrement=True,
)

OP_UPSERT = 1
OP_DELETE = 2

changes = sa.Table(
    "changes",
    metadata_obj,
    sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
    sa.Column("collection_id", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("op", sa.SmallInteger, nullable=False),
    sa.Column("vid", sa.BigInteger, nullable=False),
    sa.Index("ix_changes_collection_version", "collection_id", "version"),
    sqlite_autoincrement=True,
)

# Bulk runs (`semindex index --engine ray`, semindex/indexer/ray_engine.py): one row per run, one
# per committed shard. A shard's row is inserted inside the write transaction that commits the
# shard's documents, and (run_id, shard) is the primary key, so a shard is committed exactly once.
runs = sa.Table(
    "semindex_runs",
    metadata_obj,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("collection_id", sa.BigInteger, nullable=False),
    sa.Column("plan_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running | done
    sa.Column("shards", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
)

run_shards = sa.Table(
    "semindex_run_shards",
    metadata_obj,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("shard", sa.Integer, primary_key=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("added", sa.Integer, nullable=False),
    sa.Column("updated", sa.Integer, nullable=False),
    sa.Column("unchanged", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
)
