"""Front ends: the PyTorch export and an ONNX file pass the same checks."""

from __future__ import annotations

import pytest

from tapeout.compilers.errors import InvalidInput
from tapeout.compilers.frontends import OnnxSource, PyTorchSource, check_model, export_model
from tapeout.compilers.interface import TensorSpec
from conftest import EXAMPLE

IMAGE = (TensorSpec("image", (1, 1, 16, 16), "float32"),)


def test_pytorch_export_is_one_checked_file_with_the_declared_interface(exported_model):
    import onnx

    model = onnx.load(str(exported_model.path))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert exported_model.inputs == IMAGE
    assert exported_model.outputs == (TensorSpec("logits", (1, 10), "float32"),)
    assert exported_model.opset >= 18
    assert len(exported_model.digest) == 64


def test_onnx_source_passes_the_same_checks(exported_model, tmp_path):
    checked = export_model(OnnxSource(exported_model.path), IMAGE, ("logits",), tmp_path / "m.onnx")
    assert checked.digest == exported_model.digest


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"\x00not a protobuf at all\xff" * 10)
    with pytest.raises(InvalidInput, match="model.onnx: not an ONNX model"):
        export_model(OnnxSource(bogus), IMAGE, (), tmp_path / "out.onnx")


def test_mismatched_input_names_are_named(exported_model):
    with pytest.raises(InvalidInput, match=r"model inputs: expected \['pixels'\], found \['image'\]"):
        check_model(exported_model.path, (TensorSpec("pixels", (1, 1, 16, 16), "float32"),), ())


def test_mismatched_input_shape_is_named(exported_model):
    with pytest.raises(InvalidInput, match=r"input 'image': expected float32\[1, 1, 8, 8\]"):
        check_model(exported_model.path, (TensorSpec("image", (1, 1, 8, 8), "float32"),), ())


def test_weights_that_do_not_fit_the_module_are_refused(tmp_path):
    import torch

    wrong = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    source = PyTorchSource(EXAMPLE / "model.py", "build_model", wrong)
    with pytest.raises(InvalidInput, match="does not fit build_model"):
        export_model(source, IMAGE, ("logits",), tmp_path / "out.onnx")


def test_weights_are_never_unpickled_as_objects(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    malicious = tmp_path / "weights.pt"
    malicious.write_bytes(pickle.dumps(Payload()))
    source = PyTorchSource(EXAMPLE / "model.py", "build_model", malicious)
    with pytest.raises(InvalidInput, match="not a loadable state dict"):
        export_model(source, IMAGE, ("logits",), tmp_path / "out.onnx")


def test_missing_factory_function_is_named(tmp_path):
    source = PyTorchSource(EXAMPLE / "model.py", "no_such_factory", EXAMPLE / "weights.pt")
    with pytest.raises(InvalidInput, match="expected a function 'no_such_factory'"):
        export_model(source, IMAGE, ("logits",), tmp_path / "out.onnx")
