"""The `semindex` command: thin click skins over the library, one module per command group."""

from __future__ import annotations

from . import admin, embed_cmd, eval_cmd, finetune_cmd, index_cmd, search_cmd, serve_cmd, vectors_cmd  # noqa: F401  (register the commands)
from .app import cli, main

__all__ = ["cli", "main"]
