"""Front ends: the PyTorch export and an ONNX file pass the same checks."""

from __future__ import annotations

from pathlib import Path

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


def test_the_export_does_not_depend_on_the_folder_it_was_made_in(exported_model, tmp_path):
    """The same factory and weights, checked out elsewhere, export to the same bytes: the
    model names no path of this machine (the exporter records each node's Python stack, with
    the factory's and torch's own files, and the factory module's name)."""
    import shutil

    import onnx

    elsewhere = tmp_path / "another" / "checkout"
    shutil.copytree(EXAMPLE, elsewhere, ignore=shutil.ignore_patterns("__pycache__"))
    again = export_model(
        PyTorchSource(elsewhere / "model.py", "build_model", elsewhere / "weights.pt"),
        IMAGE, ("logits",), tmp_path / "model.onnx",
    )
    assert again.path.read_bytes() == exported_model.path.read_bytes()
    model = onnx.load(str(again.path))
    values = [entry.value for node in model.graph.node for entry in node.metadata_props]
    assert values, "the exporter's own node metadata (names, scopes) is kept"
    for folder in (str(EXAMPLE), str(elsewhere), str(Path(onnx.__file__).parents[1])):
        assert not any(folder in value for value in values)


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


def _with_external_weights(model_path, folder, location="weights.data"):
    """The model re-saved as PyTorch's exporter writes it by default: weights in a file beside it."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(model_path))
    target = folder / "model.onnx"
    onnx.save(model, str(target), save_as_external_data=True, location=location, size_threshold=0)
    return target


def test_external_weights_beside_the_model_are_taken_in(exported_model, tmp_path):
    """An fp32 model whose weights lie in a file beside it is copied as one file holding them,
    with the same digest and outputs as the single-file model."""
    import numpy as np
    import onnx
    import onnxruntime

    split = _with_external_weights(exported_model.path, tmp_path / "split")
    assert len(list((tmp_path / "split").iterdir())) == 2
    checked = export_model(OnnxSource(split), IMAGE, ("logits",), tmp_path / "copy.onnx")
    copy = onnx.load(str(checked.path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in copy.graph.initializer)
    sample = {"image": np.random.default_rng(0).standard_normal((1, 1, 16, 16), dtype=np.float32)}
    outputs = [
        onnxruntime.InferenceSession(str(path)).run(None, sample)[0] for path in (exported_model.path, checked.path)
    ]
    np.testing.assert_array_equal(*outputs)


def test_changed_external_weights_change_the_export_key(exported_model, tmp_path):
    from tapeout.compilers.frontends import OnnxFrontEnd

    split = _with_external_weights(exported_model.path, tmp_path / "split")
    before = OnnxFrontEnd().material(OnnxSource(split))
    weights = tmp_path / "split" / "weights.data"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert OnnxFrontEnd().material(OnnxSource(split)) != before


def test_external_weights_outside_the_models_folder_are_refused(exported_model, tmp_path):
    import onnx

    split = _with_external_weights(exported_model.path, tmp_path / "outside" / "model")
    (tmp_path / "outside" / "model" / "weights.data").rename(tmp_path / "outside" / "weights.data")
    model = onnx.load(str(split), load_external_data=False)
    for tensor in model.graph.initializer:  # onnx.save refuses '..'; a hostile file need not
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.data"
    split.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidInput, match=r"external weights must lie in the model's folder, found location '\.\./weights\.data'"):
        export_model(OnnxSource(split), IMAGE, ("logits",), tmp_path / "copy.onnx")


def test_a_missing_external_weights_file_is_named(exported_model, tmp_path):
    split = _with_external_weights(exported_model.path, tmp_path / "split")
    (tmp_path / "split" / "weights.data").unlink()
    with pytest.raises(InvalidInput, match=r"model.onnx: tensor '.+': external weights file 'weights.data' not found"):
        export_model(OnnxSource(split), IMAGE, ("logits",), tmp_path / "copy.onnx")
