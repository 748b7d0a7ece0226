"""--engine ray failure lines that need no cluster: missing extra, version mismatch, bad flags."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

from tests.support import SAMPLE, invoke_cli


def _coll(tmp_path: Path) -> Any:
    import semindex

    return semindex.Store(tmp_path / "s").collection("c", model="hash")


def test_missing_extra_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from semindex.indexer.ray_engine import RayEngineError, RayOptions, ray_index

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RayEngineError, match=r"pip install 'semindex\[ray\]'"):
        ray_index(_coll(tmp_path), [SAMPLE], RayOptions())


def test_version_mismatch_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    import ray

    from semindex.indexer.ray_engine import RayEngineError, RayOptions, ray_session

    def fake_init(**kwargs: Any) -> None:
        raise RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.49.0\n    Python: 3.11")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RayEngineError) as err, ray_session(ray, RayOptions(address="10.0.0.1:6379")):
        pass
    assert "version mismatch" in str(err.value).lower() and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--engine", "ray", "--devices", "cpu,cpu"], "--devices is for the local engine"),
        (["--resume"], "--resume needs --engine ray"),
    ],
)
def test_bad_flag_combinations(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = invoke_cli("index", str(SAMPLE), "--store", str(tmp_path / "s"), "--model", "hash", *flags)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
