"""The OpenVINO compile step, run in a process of its own by `OpenVinoCompiler.compile`.

    python -m tapeout.compilers.openvino.worker MODEL.onnx OUT_DIR PROPERTIES.json

A fresh process per compile because OpenVINO names the nodes it creates from process-wide
counters, and the names are serialised into the exported blob: two compiles in one process
give two different blobs, two compiles in fresh processes the same bytes. The process also
bounds a compile by a timeout and keeps a crash of the toolchain out of the pipeline.

Prints one JSON object on stdout: {"status": "ok", "layers": ...} or
{"status": "unsupported", "outputs": [...]} (the ONNX front end's unconverted nodes, by
their first output name) or {"status": "error", "message": ...}. Imports nothing from
tapeout beyond the standard library, so its failure is OpenVINO's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BLOB = "model.blob"


def precision_name(value: object) -> str:
    """OpenVINO's element type as its short name ("f32", "bf16")."""
    name = getattr(value, "get_type_name", None)
    return name() if callable(name) else str(value)


def main(argv: list[str]) -> int:
    model_path, out_dir, properties_path = Path(argv[0]), Path(argv[1]), Path(argv[2])
    properties = json.loads(properties_path.read_text())
    try:
        import openvino as ov

        frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
        partial = frontend.convert_partially(frontend.load(str(model_path)))
        unconverted = [
            op.get_friendly_name() for op in partial.get_ordered_ops() if "FrameworkNode" in op.get_type_name()
        ]
        if unconverted:
            print(json.dumps({"status": "unsupported", "outputs": unconverted}))
            return 0
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(model_path)), properties["device"], properties["properties"])
        (out_dir / BLOB).write_bytes(compiled.export_model().getvalue())
        layers: dict[str, int] = {}
        precisions: dict[str, int] = {}
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            if kind in ("Input", "Output", "Parameter", "Result"):
                continue
            layers[kind] = layers.get(kind, 0) + 1
            precision = info["runtimePrecision"].astype(str)
            precisions[precision] = precisions.get(precision, 0) + 1
        effective = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except Exception as error:  # OpenVINO raises RuntimeError/OpConversionFailure and friends
        print(json.dumps({"status": "error", "message": f"{type(error).__name__}: {error}"}))
        return 0
    print(json.dumps({
        "status": "ok",
        "runtime_layers": dict(sorted(layers.items())),
        "runtime_precisions": dict(sorted(precisions.items())),
        "effective_inference_precision": effective,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
