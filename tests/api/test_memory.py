"""The server gives freed memory back to the OS (glibc): fragmented free heap is returned by a trim."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from semindex.api import memory
from semindex.errors import ConfigError

glibc = pytest.mark.skipif(memory._glibc() is None or not sys.platform.startswith("linux"),
                           reason="malloc_trim is glibc's")


def test_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory.ENV, raising=False)
    assert memory.interval_from_env() == memory.DEFAULT_INTERVAL_S
    monkeypatch.setenv(memory.ENV, "0")
    assert memory.interval_from_env() == 0
    assert memory.start() is None  # 0 turns it off
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(memory.ENV, bad)
        with pytest.raises(ConfigError, match=memory.ENV):
            memory.interval_from_env()


@glibc
def test_the_trim_thread_runs_and_stops() -> None:
    trimmer = memory.start(0.05)
    assert trimmer is not None
    try:
        deadline = time.monotonic() + 10
        while trimmer.trims < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert trimmer.trims >= 2
    finally:
        trimmer.stop()
    assert not trimmer._thread.is_alive()


_FRAGMENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from semindex.api import memory

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

    trimmer = memory.start(3600) if sys.argv[2] == "on" else None  # the timer will not fire here
    big = bytearray(20_000_000)
    del big  # left alone, glibc now serves blocks under 20 MB from the heap
    blocks = [bytearray(100_000) for _ in range(4000)]  # 400 MB of 100 kB blocks
    keep = blocks[::50]  # survivors pin the heap's top and split the free space
    del blocks
    if trimmer is not None:
        trimmer.trim_now()
        trimmer.stop()
    print(rss(), len(keep))
""")


@glibc
def test_a_trim_returns_freed_fragmented_heap_to_the_os() -> None:
    """The soak's pattern in miniature: a big block freed, then many mid-size blocks freed with a
    few survivors between them. Left alone, glibc keeps the ~390 MB; with the trimmer it goes
    back. Each run is a fresh process, so the figure is that heap's alone."""
    repo = str(Path(__file__).resolve().parents[2])

    def rss_after(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FRAGMENT, repo, mode], capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        return int(out[0])

    kept, returned = rss_after("off"), rss_after("on")
    assert kept - returned > 250, (kept, returned)


def test_serve_refuses_a_bad_trim_interval(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from semindex.cli import app

    result = CliRunner().invoke(app.cli, ["serve", "--store", str(tmp_path / "s"), "--port", "0"],
                                env={memory.ENV: "often"})
    assert result.exit_code == 2, result.output
    assert memory.ENV in result.output and "Traceback" not in result.output
