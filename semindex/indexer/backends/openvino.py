"""OpenVINO backend: the exported ONNX graph converted to OpenVINO IR, run by its CPU plugin.

fp32 and bf16 share one cached IR; the precision is a compile-time hint. fp32 gives the
same vectors as torch (mean cosine 1.00000 on SciFact); bf16 runs the matrix products in
bfloat16 with fp32 accumulation where the CPU has native bf16 (AVX512-BF16, AMX), about
1.6-1.8x faster again at mean cosine 0.99998. On a CPU without native bf16 it falls back
to fp32, with a warning.

Tried and not offered: NNCF static int8 (calibrated on 300 of the collection's texts) was
only about 1.2x faster than bf16 at mean cosine 0.992 (see benchmarks/backends.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import ExportedEncoder, build_cached, cache_dir_for, copy_meta, default_threads, export_onnx

log = logging.getLogger(__name__)


def _convert(onnx_folder: Path, out: Path) -> None:
    import openvino as ov

    model = ov.convert_model(str(onnx_folder / "model.onnx"))
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    copy_meta(onnx_folder, out)


def model_folder(name: str, path: str) -> Path:
    """The cached IR folder (exported and converted on first use)."""
    onnx_folder = export_onnx(name, path)
    return build_cached(cache_dir_for(name, path, "openvino", "ir"), lambda tmp: _convert(onnx_folder, tmp))


def native_bf16(core: Any) -> bool:
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - an old plugin without the property
        return False


def compile_model(xml: Path, precision: str, threads: int) -> Any:
    import openvino as ov

    core = ov.Core()
    hint = "f32"
    if precision == "bf16":
        if native_bf16(core):
            hint = "bf16"
        else:
            log.warning("this CPU has no native bf16: running the bf16 collection's model in fp32")
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(str(xml), "CPU", config)


def load(name: str, path: str, precision: str) -> ExportedEncoder:
    folder = model_folder(name, path)
    compiled = compile_model(folder / "model.xml", precision, default_threads())
    request = compiled.create_infer_request()

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        res = request.infer({"input_ids": ids, "attention_mask": mask})
        return np.array(res[compiled.output(0)], dtype=np.float32, copy=True)

    return ExportedEncoder(name, folder, run, backend="openvino", precision=precision)
