"""Blocks of the models people deploy, built from torchvision's own classes, exported through
tapeout's PyTorch front end, quantized by ONNX Runtime and converted to int8 TFLite: LiteRT
against ONNX Runtime, op by op as the exporter wrote them (the whole networks are in the
real-model suite)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

pytest.importorskip("ethosu.vela")
pytest.importorskip("flatbuffers")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("torch")

from ethos_u_models import lsb_differences  # noqa: E402

pytestmark = pytest.mark.slow

# torchvision's wheel ships a CUDA ops library that cannot load beside the CPU torch; its
# architectures only need these two op names defined (they are never called).
_SHIM = """\
import torch
try:
    torch.ops.torchvision.nms
except (AttributeError, RuntimeError):
    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
"""
exec(_SHIM)
pytest.importorskip("torchvision")

# name: (torchvision construction, input shape, TFLite ops the block must contain, max LSB).
# The largest differences come from the ops docs/ethos-u.md lists as not bit-exact (LOGISTIC,
# HARD_SWISH, GELU, SOFTMAX, BATCH_MATMUL), grown by the layers after them.
BLOCKS = {
    "resnet": ("""
        from torchvision.models.resnet import BasicBlock, conv1x1
        down = nn.Sequential(conv1x1(16, 32, 2), nn.BatchNorm2d(32))
        model = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.MaxPool2d(3, 2, 1), BasicBlock(16, 16), BasicBlock(16, 32, 2, down),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        """, (1, 3, 32, 32), {"PAD", "MAX_POOL_2D", "ADD", "MEAN", "FULLY_CONNECTED"}, 1),
    "mobilenet_v3": ("""
        from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig
        from torchvision.ops.misc import Conv2dNormActivation
        model = nn.Sequential(
            Conv2dNormActivation(3, 16, stride=2, activation_layer=nn.Hardswish),
            InvertedResidual(InvertedResidualConfig(16, 3, 16, 16, True, "RE", 2, 1, 1.0), nn.BatchNorm2d),
            InvertedResidual(InvertedResidualConfig(16, 5, 48, 24, True, "HS", 1, 1, 1.0), nn.BatchNorm2d),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 32), nn.Hardswish(), nn.Linear(32, 10))
        """, (1, 3, 32, 32), {"HARD_SWISH", "MEAN", "ADD", "MUL"}, 2),
    "efficientnet": ("""
        from functools import partial
        from torchvision.models.efficientnet import MBConv, MBConvConfig
        from torchvision.ops.misc import Conv2dNormActivation
        model = nn.Sequential(
            Conv2dNormActivation(3, 16, stride=2, activation_layer=nn.SiLU),
            MBConv(MBConvConfig(4, 3, 1, 16, 24, 1), 0.0, nn.BatchNorm2d),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
        """, (1, 3, 32, 32), {"LOGISTIC", "QUANTIZE", "MUL", "MEAN"}, 2),
    "shufflenet_v2": ("""
        from torchvision.models.shufflenetv2 import InvertedResidual
        model = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.ReLU(), InvertedResidual(24, 48, 2),
                              InvertedResidual(48, 48, 1))
        """, (1, 3, 32, 32), {"SPLIT", "TRANSPOSE", "CONCATENATION"}, 1),
    "regnet_x": ("""
        from torchvision.models.regnet import ResBottleneckBlock
        model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(),
                              ResBottleneckBlock(16, 32, 2, nn.BatchNorm2d, nn.ReLU, 8, 1.0, None))
        """, (1, 3, 32, 32), {"SPLIT", "CONV_2D", "CONCATENATION", "ADD"}, 1),
    "densenet": ("""
        from torchvision.models.densenet import _DenseBlock, _Transition
        model = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), _DenseBlock(2, 16, 2, 8, 0.0), _Transition(32, 16))
        """, (1, 3, 16, 16), {"DEPTHWISE_CONV_2D", "CONCATENATION"}, 1),
    "googlenet": ("""
        from torchvision.models.googlenet import BasicConv2d, Inception
        model = nn.Sequential(BasicConv2d(3, 16, kernel_size=3, stride=2), nn.MaxPool2d(3, 2, ceil_mode=True),
                              Inception(16, 8, 8, 16, 4, 8, 8))
        """, (1, 3, 32, 32), {"MAX_POOL_2D", "CONCATENATION"}, 1),
    "squeezenet": ("""
        from torchvision.models.squeezenet import Fire
        model = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 4, 8, 8))
        """, (1, 3, 32, 32), {"MAX_POOL_2D", "CONCATENATION"}, 1),
    "convnext": ("""
        from torchvision.models.convnext import CNBlock
        model = nn.Sequential(nn.Conv2d(3, 16, 4, 4), CNBlock(16, 0.5, 0.0))
        """, (1, 3, 32, 32), {"DEQUANTIZE", "RSQRT", "GELU", "FULLY_CONNECTED"}, 2),
    "vit": ("""
        from torchvision.models.vision_transformer import VisionTransformer
        model = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                  mlp_dim=32, num_classes=10)
        nn.init.normal_(model.heads.head.weight, std=0.3)  # torchvision starts the head at zero
        nn.init.normal_(model.class_token, std=0.5)
        """, (1, 3, 16, 16), {"BATCH_MATMUL", "SOFTMAX", "GELU", "STRIDED_SLICE", "CONCATENATION"}, 3),
}


def _factory(construction: str) -> str:
    return _SHIM + "from torch import nn\n\n\ndef build():\n" + textwrap.indent(
        textwrap.dedent(construction).strip() + "\n"
        "generator = torch.Generator().manual_seed(1)\n"
        "for module in model.modules():  # non-trivial BatchNorm statistics, as trained ones are\n"
        "    if isinstance(module, nn.BatchNorm2d):\n"
        "        module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)\n"
        "        module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)\n"
        "return model.eval()\n", "    ")


def _quantized(name: str, directory, activations: str):
    import importlib.util

    import torch

    from ethos_u_models import _Reader
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from tapeout.compilers.frontends import PyTorchSource, export_model
    from tapeout.compilers.interface import TensorSpec

    construction, shape, _, _ = BLOCKS[name]
    factory = directory / f"{name}.py"
    factory.write_text(_factory(construction))
    spec = importlib.util.spec_from_file_location(name, factory)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    torch.save(module.build().state_dict(), directory / f"{name}.pt")
    exported = export_model(PyTorchSource(factory, "build", directory / f"{name}.pt"),
                            (TensorSpec("image", shape, "float32"),), ("logits",), directory / f"{name}.onnx")
    rng = np.random.default_rng(2)
    feeds = [{"image": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(8)]
    path = directory / f"{name}.{activations}.qdq.onnx"
    quantize_static(str(exported.path), str(path), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activations],
                    weight_type=QuantType.QInt8)
    return path


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_converts_and_matches_onnxruntime(name, tmp_path):
    _, _, expected_ops, max_lsb = BLOCKS[name]
    worst, _, conversion = lsb_differences(_quantized(name, tmp_path, "int8"), tmp_path)
    assert expected_ops <= set(conversion.operators)
    assert worst <= max_lsb


@pytest.mark.parametrize("name", ["mobilenet_v3", "vit"])
def test_uint8_block_converts_and_matches_onnxruntime(name, tmp_path):
    worst, _, _ = lsb_differences(_quantized(name, tmp_path, "uint8"), tmp_path)
    assert worst <= BLOCKS[name][3]
