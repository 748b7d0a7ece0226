"""How --engine ray cuts a JSONL file into shards: by records, so a shard is one local commit batch."""

from __future__ import annotations

import json
from pathlib import Path

from semindex.indexer.ray_engine import _jsonl_ranges, plan_shards
from semindex.indexer.readers import iter_records


def test_shards_count_records_and_blank_lines_ride_along(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    src.write_text('{"a":1}\n\n{"a":2}\n{"a":3}\n\n\n{"a":4}\n{"a":5}\n\n', encoding="utf-8")
    data = src.read_bytes()
    got = [(line, data[start:end]) for start, end, line in _jsonl_ranges(str(src), 2)]
    assert got == [
        (1, b'{"a":1}\n\n{"a":2}\n'),
        (4, b'{"a":3}\n\n\n{"a":4}\n'),
        (8, b'{"a":5}\n\n'),  # trailing blank lines join the last shard, never a shard of their own
    ]
    assert b"".join(part for _, part in got) == data


def test_shards_line_up_with_the_local_commit_batches(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl"
    with src.open("w", encoding="utf-8") as fh:
        for i in range(1000):
            if i % 7 == 3:
                fh.write("\n")
            fh.write(json.dumps({"id": f"d{i}", "text": f"t{i}"}) + "\n")
    data = src.read_bytes()
    per_shard = []
    for start, end, _ in _jsonl_ranges(str(src), 128):
        per_shard.append([json.loads(x)["id"] for x in data[start:end].splitlines() if x.strip()])
    ids = [r.id for r in iter_records([src])]
    assert per_shard == [ids[i:i + 128] for i in range(0, len(ids), 128)]  # commit_every=128 batches
    assert len(list(plan_shards([src], {}, 128))) == len(per_shard)
