"""HTTP side of chunking (issue 10), through a real server: chunk fields on hits, search options,
strict validation, collection creation with a chunking spec. Fast hashing encoder (lane default)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

SENT = "The pump impeller grinds when the filter clogs and the motor overheats quickly. "
LONG = "\n\n".join([
    "Installation. Download the archive, unpack it and run the installer as root. " * 30,
    "Cleaning. Wipe the filter every week and descale the tank with vinegar monthly. " * 30,
    SENT * 30,
])
SHORT = "A short note about sourdough bread."


@pytest.fixture
def base(tmp_path: Path, encoder: Any, thread_server: Any) -> Iterator[str]:
    import semindex

    store = semindex.Store(tmp_path / "store")
    store.collection("docs").add([{"id": "manual", "text": LONG}, {"id": "short", "text": SHORT}])
    yield thread_server(store).base
    store.close()


def post(base: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=60)


def test_hits_carry_chunks_that_slice_back_and_context(base: str) -> None:
    r = post(base, "/collections/docs/search", {"query": "pump impeller grinds", "k": 2, "context_chunks": 1})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert [h["id"] for h in hits][0] == "manual" and len(hits) == 2
    best = hits[0]["chunks"][0]
    assert set(best) == {"index", "start", "end", "score"}
    assert hits[0]["text"] == LONG[best["start"]:best["end"]] and hits[0]["text"] in hits[0]["context"]
    plain = post(base, "/collections/docs/search", {"query": "pump impeller grinds", "k": 2}).json()["hits"]
    assert plain[0]["context"] is None and plain[0]["chunks"] == hits[0]["chunks"]
    ids_only = post(base, "/collections/docs/search", {"query": "pump", "k": 1, "include_text": False}).json()
    assert ids_only["hits"][0]["text"] == "" and ids_only["hits"][0]["chunks"]


def test_chunk_level_threshold_mmr_and_batch(base: str) -> None:
    chunks = post(base, "/collections/docs/search", {"query": "pump impeller", "k": 5, "level": "chunk"}).json()
    assert len(chunks["hits"]) == 5 and sum(h["id"] == "manual" for h in chunks["hits"]) >= 4
    for h in chunks["hits"]:
        c = h["chunks"][0]
        assert h["text"] == (LONG if h["id"] == "manual" else SHORT)[c["start"]:c["end"]]
    top = post(base, "/collections/docs/search", {"query": "pump impeller", "k": 2}).json()["hits"]
    cut = post(base, "/collections/docs/search",
               {"query": "pump impeller", "k": 2, "score_threshold": top[0]["score"] - 1e-6}).json()["hits"]
    assert [h["id"] for h in cut] == ["manual"]
    mmr = post(base, "/collections/docs/search",
               {"query": "pump impeller", "k": 2, "mmr": True, "fetch_k": 5, "lambda_mult": 0.3}).json()["hits"]
    assert {h["id"] for h in mmr} == {"manual", "short"}
    batch = post(base, "/collections/docs/search/batch",
                 {"queries": ["pump impeller", "sourdough bread"], "k": 2, "context_chunks": 1})
    assert batch.status_code == 200, batch.text
    for res in batch.json()["results"]:
        assert sorted(h["id"] for h in res["hits"]) == ["manual", "short"]
        assert all(h["chunks"] and h["context"] for h in res["hits"])


@pytest.mark.parametrize("extra", [
    {"level": "paragraph"},
    {"score_threshold": "high"},
    {"mmr": "yes"},
    {"mmr": True, "lambda_mult": 1.5},
    {"mmr": True, "fetch_k": 0},
    {"mmr": True, "fetch_k": "5"},
    {"lambda_mult": 0.5},  # needs mmr
    {"fetch_k": 10},  # needs mmr
    {"context_chunks": -1},
    {"context_chunks": 99},
    {"context_chunks": 1.5},
])
def test_bad_search_values_are_422(base: str, extra: dict[str, Any]) -> None:
    for path, body in (("/collections/docs/search", {"query": "pump"}),
                       ("/collections/docs/search/batch", {"queries": ["pump"]})):
        r = post(base, path, {**body, **extra})
        assert r.status_code == 422, (path, extra, r.text)
        assert r.json()["error"] == "validation_error"


def test_create_collection_with_chunking(base: str) -> None:
    r = post(base, "/collections", {"name": "small", "chunking": {"size": 64, "overlap": 8}})
    assert r.status_code == 201, r.text
    assert r.json()["chunking"] == {"enabled": True, "size": 64, "overlap": 8}
    off = post(base, "/collections", {"name": "flat", "chunking": False})
    assert off.status_code == 201 and off.json()["chunking"]["enabled"] is False
    for name in ("small", "flat"):
        up = post(base, f"/collections/{name}/documents", {"documents": [{"id": "manual", "text": LONG}]})
        assert up.status_code in (200, 201), up.text
    info = {c["name"]: c for c in httpx.get(f"{base}/collections").json()["collections"]}
    assert info["small"]["count"] == 1 and info["small"]["chunks"] > info["docs"]["chunks"] - 1
    assert info["flat"]["count"] == 1 and info["flat"]["chunks"] == 1
    assert info["docs"]["count"] == 2 and info["docs"]["chunks"] > 2


@pytest.mark.parametrize("chunking, status", [
    ({"size": 8}, 422),
    ({"size": "64"}, 422),
    ({"enabled": "no"}, 422),
    ({"size": 64, "colour": 1}, 422),
    (True, 422),
    ({"size": 60000}, 400),  # above the model's window: the library says so
    ({"size": 64, "overlap": 40}, 400),  # more than half the size
])
def test_bad_chunking_is_refused(base: str, chunking: Any, status: int) -> None:
    r = post(base, "/collections", {"name": "bad", "chunking": chunking})
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text
    assert httpx.get(f"{base}/collections/bad").status_code == 404
