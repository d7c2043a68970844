"""Build one suite model as a user would, and keep it on disk so the next run does not.

fp32: the architecture's factory with seeded random weights (made realistic, below), exported
by tapeout's own PyTorch front end (`tapeout.compilers.frontends.export_model`: torch.onnx's
dynamo exporter). QDQ: ONNX Runtime's `quantize_static` on seeded random calibration data,
QDQ format, per-channel symmetric int8 weights, MinMax ranges, uint8 activations (ONNX
Runtime's default) or int8 activations (what TFLite and Ethos-U take).

Built files live under `<repository>/.cache/real-models/<name>-<digest>/` (gitignored). The
digest covers everything that changes them: the architecture, the seed and sample counts, the
versions of torch, torchvision, onnxscript, onnx, onnxruntime and numpy, and the code of this
suite and of the front end. Each file is written under a temporary name and renamed, so an
interrupted build leaves nothing a later run would take for finished.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from real_models.architectures import ARCHITECTURES, Architecture

SEED = 0
CALIBRATION_SAMPLES = 8
TEST_SAMPLES = 4
INPUT = "input"
OUTPUT = "output"
ACTIVATIONS = ("uint8", "int8")
REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPOSITORY / ".cache" / "real-models"
_VERSIONED = ("torch", "torchvision", "onnxscript", "onnx", "onnxruntime", "numpy")


@dataclass(frozen=True)
class RealModel:
    """One built suite model.

    `calibration` and `test_inputs` are float32 arrays of samples stacked on the batch axis,
    [samples, *input_shape[1:]], as tapeout's sample sets hold them; the model's single input
    `input` takes one sample at a time (batch 1). The QDQ model was calibrated on
    `calibration`; `test_inputs` are other draws from the same distribution.
    """

    architecture: Architecture
    activations: str
    float_path: Path
    qdq_path: Path
    calibration: np.ndarray
    test_inputs: np.ndarray

    @property
    def name(self) -> str:
        return self.architecture.name

    def feeds(self) -> list[dict[str, np.ndarray]]:
        """The test inputs as feeds: one {"input": array} per sample."""
        return [{INPUT: self.test_inputs[index:index + 1]} for index in range(len(self.test_inputs))]

    @cached_property
    def quantized(self) -> "QuantizedModel":  # noqa: F821
        """The QDQ model as tapeout's compilers take it (`Compiler.compile(model, ...)`)."""
        from tapeout.compilers.frontends import check_model
        from tapeout.compilers.interface import QuantizedModel

        described = check_model(self.qdq_path)
        return QuantizedModel(
            path=self.qdq_path,
            digest=described.digest,
            float_path=self.float_path,
            inputs=described.inputs,
            outputs=described.outputs,
        )


def build(name: str, activations: str = "uint8", cache: Path = DEFAULT_CACHE) -> RealModel:
    """The suite model `name` (a key of `ARCHITECTURES`) with `activations` "uint8" or "int8",
    from the cache when it holds it, else built (seconds to a minute) and cached.

    Raises:
        ValueError: an unknown name or activation type.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"no suite model {name!r}; the suite has {sorted(ARCHITECTURES)}")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations: expected one of {ACTIVATIONS}, found {activations!r}")
    architecture = ARCHITECTURES[name]
    digest = build_digest(architecture)
    folder = cache / f"{name}-{digest[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale(cache, name, folder)
    float_path = folder / "model.onnx"
    samples_path = folder / "samples.npz"
    qdq_path = folder / f"model.qdq-{activations}.onnx"
    if not samples_path.exists():
        _write_atomically(samples_path, lambda path: _write_samples(architecture, path))
    if not float_path.exists():
        _write_atomically(float_path, lambda path: _export(architecture, path))
    with np.load(samples_path) as samples:
        calibration, test_inputs = samples["calibration"], samples["test"]
    if not qdq_path.exists():
        _write_atomically(qdq_path, lambda path: _quantize(float_path, calibration, activations, path))
    return RealModel(architecture, activations, float_path, qdq_path, calibration, test_inputs)


def build_digest(architecture: Architecture) -> str:
    """sha256 over everything the built files depend on (see the module docstring)."""
    from tapeout.compilers import frontends
    from tapeout.compilers.versions import package_versions

    code = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (
            Path(__file__),
            Path(__file__).with_name("architectures.py"),
            architecture.factory_file,
            Path(frontends.__file__),
        )
    }
    document = {
        "architecture": [architecture.name, architecture.factory_file.name, list(architecture.input_shape)],
        "seed": SEED,
        "samples": [CALIBRATION_SAMPLES, TEST_SAMPLES],
        "versions": package_versions(*_VERSIONED),
        "code": code,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def _remove_stale(cache: Path, name: str, keep: Path) -> None:
    """Builds of `name` under an older digest: nothing will read them again."""
    for folder in cache.glob(f"{name}-*"):
        if folder != keep and folder.is_dir() and folder.name[len(name) + 1:].isalnum():
            shutil.rmtree(folder, ignore_errors=True)


def _write_atomically(path: Path, write) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".partial-") as scratch:
        partial = Path(scratch) / path.name
        write(partial)
        os.replace(partial, path)


def _write_samples(architecture: Architecture, path: Path) -> None:
    """Standard-normal inputs: what normalised images, MFCCs and log-mel frames look like to
    a network's first layer. Separate streams, so the test inputs are not calibration ones."""
    calibration_stream, test_stream = np.random.default_rng(SEED).spawn(2)
    sample = architecture.input_shape[1:]
    np.savez(
        path,
        calibration=calibration_stream.standard_normal((CALIBRATION_SAMPLES, *sample), dtype=np.float32),
        test=test_stream.standard_normal((TEST_SAMPLES, *sample), dtype=np.float32),
    )


def _factory(architecture: Architecture):
    """The architecture's factory function, from its file (imported as the front end does)."""
    module_name = f"real_models_factory_{architecture.factory_file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, architecture.factory_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, architecture.name)


def _export(architecture: Architecture, path: Path) -> None:
    import torch

    from tapeout.compilers.frontends import PyTorchSource, export_model
    from tapeout.compilers.interface import TensorSpec

    torch.manual_seed(SEED)
    network = _factory(architecture)()
    _make_ranges_realistic(network, architecture.input_shape)
    weights = path.with_name("weights.pt")
    torch.save(network.state_dict(), weights)
    export_model(
        PyTorchSource(architecture.factory_file, architecture.name, weights),
        (TensorSpec(INPUT, architecture.input_shape, "float32"),),
        (OUTPUT,),
        path,
    )


def _make_ranges_realistic(network: "torch.nn.Module", input_shape: tuple[int, ...]) -> None:  # noqa: F821
    """Give the parameters a fresh model initialises to constants trained-looking values.

    A fresh BatchNorm has running mean 0 and variance 1 and passes activations through
    unnormalised, so ranges grow or shrink layer by layer as no trained model's do. Here every
    BatchNorm's running statistics are measured on standard-normal inputs (two batches of 8,
    in training mode, cumulative average), and the affine parameters of every normalisation
    layer (weight 1, bias 0 when fresh) are drawn around those values: weight uniform in
    [0.5, 1.5], bias normal with deviation 0.2. ConvNeXt's layer scales start at 1e-6, which
    would switch its residual branches off; they are drawn uniform in [0.1, 0.5]. Any other
    parameter a fresh model sets to one constant (torchvision's ViT starts its classifier head
    and its class token at zero, which makes the output independent of the input) is drawn as
    a fresh layer of its kind draws its weights (Linear, Conv), or normal with deviation 0.02
    (DeiT's initialisation of tokens and embeddings).
    """
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(SEED)
    batch_norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    normalisations = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, normalisations) and getattr(module, "weight", None) is not None:
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.2)
        for name, parameter in network.named_parameters():
            if name.endswith("layer_scale"):
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 0.4 + 0.1)
        layers = (nn.Linear, nn.modules.conv._ConvNd)
        for module in network.modules():
            if isinstance(module, layers):
                if _constant(module.weight):  # a zero bias beside real weights is a fresh layer's own
                    bound = 1 / module.weight[0].numel() ** 0.5  # torch's default for a fresh layer
                    module.weight.copy_((torch.rand(module.weight.shape, generator=generator) * 2 - 1) * bound)
                    if module.bias is not None:
                        module.bias.copy_((torch.rand(module.bias.shape, generator=generator) * 2 - 1) * bound)
            elif not isinstance(module, normalisations):
                for parameter in module.parameters(recurse=False):
                    if parameter.numel() > 1 and _constant(parameter):
                        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        if batch_norms:
            momenta = [module.momentum for module in batch_norms]
            for module in batch_norms:
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the batches below
            network.train()
            for _ in range(2):
                network(torch.randn((8, *input_shape[1:]), generator=generator))
            for module, momentum in zip(batch_norms, momenta):
                module.momentum = momentum
    network.eval()


def _constant(parameter: "torch.Tensor") -> bool:  # noqa: F821
    return bool((parameter == parameter.flatten()[0]).all())


def _quantize(float_path: Path, calibration: np.ndarray, activations: str, path: Path) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self._samples = iter(calibration)

        def get_next(self):
            sample = next(self._samples, None)
            return None if sample is None else {INPUT: sample[None]}

    quantize_static(
        str(float_path),
        str(path),
        Samples(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


def with_batch(path: Path, batch: int, out: Path) -> Path:
    """The suite's ONNX model at `path` with its batch dimension set to `batch`, saved to
    `out`: the input's and outputs' first dimension, and the leading 1 of the constant shape
    [1, features] the exporter flattens to before the classifier (a Reshape)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    for o in model.graph.output:
        o.type.tensor_type.shape.dim[0].dim_value = batch
    del model.graph.value_info[:]
    shapes = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
    for init in model.graph.initializer:
        if init.name in shapes:
            dims = numpy_helper.to_array(init).copy()
            if dims.size and dims[0] == 1:
                dims[0] = batch
                init.CopyFrom(numpy_helper.from_array(dims, init.name))
    onnx.save(model, str(out))
    return out
