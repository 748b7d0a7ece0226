"""The public surface stays honest: what `__all__` promises exists, is documented, and the
models that mirror each other across layers do not drift apart."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest

import semindex
import semindex.core
import semindex.errors
from tests.support import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _mentioned(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}\b", text) is not None or f"`{name}`" in text


@pytest.mark.parametrize("module", [semindex, semindex.core, semindex.errors], ids=lambda m: m.__name__)
def test_every_name_in_all_exists(module: object) -> None:
    missing = [n for n in module.__all__ if not hasattr(module, n)]  # type: ignore[attr-defined]
    assert not missing, f"{module.__name__}.__all__ names that do not exist: {missing}"  # type: ignore[attr-defined]


def test_every_public_name_is_documented_in_the_readme() -> None:
    undocumented = [n for n in semindex.__all__ if not _mentioned(n, README)]
    assert not undocumented, f"semindex.__all__ names the README never mentions: {undocumented}"


def test_every_error_is_exported_and_drawn_in_the_error_tree() -> None:
    tree = semindex.errors.__doc__ or ""
    classes = [
        name for name, obj in vars(semindex.errors).items()
        if isinstance(obj, type) and issubclass(obj, semindex.errors.SemindexError)
    ]
    assert sorted(classes) == sorted(semindex.errors.__all__)
    assert [c for c in classes if c not in tree] == []
    # errors are defined in errors.py only (others may re-export them)
    for name in classes:
        assert getattr(semindex.errors, name).__module__ == "semindex.errors", name


def test_collection_out_mirrors_collection_info() -> None:
    from semindex.api.schemas import CollectionOut

    info_fields = [f.name for f in dataclasses.fields(semindex.CollectionInfo)]
    assert list(CollectionOut.model_fields) == info_fields
    assert all(f.is_required() for f in CollectionOut.model_fields.values()), "every field is always set"


def test_api_constants_come_from_the_library() -> None:
    from semindex.api import schemas

    assert schemas.MAX_K == semindex.core.MAX_K
    assert semindex.core.NAME_RE.pattern == schemas.COLLECTION_NAME


@pytest.mark.skipif(shutil.which("lint-imports") is None and not (REPO / ".venv/bin/lint-imports").exists(),
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_layering_contracts_hold() -> None:
    """The same check `make lint` runs: a wrong-way import fails here too, naming the import chain."""
    exe = shutil.which("lint-imports") or str(REPO / ".venv/bin/lint-imports")
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
