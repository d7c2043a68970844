"""The ACME NPU host runtime: checks a `.acme` blob and runs it (simulated on the CPU)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from acme_npu.blob import unpack


class AcmeRuntime:
    """One loaded blob. Raises acme_npu.blob.BlobError on a corrupted or foreign file.

    `trace` is the runtime's debug mode: it also returns every int8 tensor the NPU writes
    (the QuantizeLinear outputs of the mapped graph), keyed by tensor name. Exposing them
    stops ONNX Runtime (the simulator) from fusing those Q/DQ node units, so a traced tensor
    may sit one LSB from what the fused `run` computes internally; `run` is unaffected.
    """

    def __init__(self, blob: Path, threads: int = 1) -> None:
        self.header, self._payload = unpack(blob.read_bytes())
        self._threads = threads
        self._session = self._open(self._payload)
        self._outputs = [output.name for output in self._session.get_outputs()]
        self._debug = None

    def _open(self, payload: bytes):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        return onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, dict(inputs))))

    def trace(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._debug is None:
            import onnx
            from onnx import TensorProto, helper

            model = onnx.load_from_string(self._payload)
            present = {output.name for output in model.graph.output}
            for node in model.graph.node:
                if node.op_type == "QuantizeLinear" and node.output[0] not in present:
                    model.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.INT8, None))
            session = self._open(model.SerializeToString())
            self._debug = (session, [output.name for output in session.get_outputs()])
        session, names = self._debug
        return dict(zip(names, session.run(names, dict(inputs))))
