"""Adapters for RAG frameworks, each an optional extra imported only when asked for.

    from semindex.integrations.langchain import SemindexVectorStore      # pip install 'semindex[langchain]'
    from semindex.integrations.llamaindex import SemindexVectorStore     # pip install 'semindex[llamaindex]'

Nothing is imported here: ``import semindex`` never pulls in LangChain or LlamaIndex, and a
missing extra is an ImportError naming the ``pip install`` line that fixes it.
"""

from __future__ import annotations


def missing_extra(extra: str, package: str) -> ImportError:
    """The error an adapter raises when its framework is not installed: names the fix."""
    return ImportError(
        f"semindex.integrations.{extra} needs {package}: pip install 'semindex[{extra}]'"
    )
