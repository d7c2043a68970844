"""The suite's torchvision 0.28.0 architectures, one model factory per architecture.

Each function returns a fresh `torch.nn.Module` with torchvision's own initialisation and no
pretrained weights (`weights=None`: nothing is downloaded). tapeout's PyTorch front end imports
this file by path (a pipeline's `factory: FILE.py:FUNCTION`), so it imports nothing from the
suite package.
"""

from __future__ import annotations

import sys

import torch


def _torchvision_models():
    """`torchvision.models`, importable beside the CPU-only torch wheel.

    PyPI's torchvision 0.28.0 wheel carries a compiled ops library built against CUDA torch;
    beside the CPU wheel it does not load, and torchvision's fake-tensor registrations for
    `torchvision::nms` / `qnms` then fail at import with "operator torchvision::nms does not
    exist". Defining the two operator schemas first lets the import through; the
    architectures are pure Python and never call those ops. This is the suite's only import
    of torchvision, so the workaround lives here and nowhere else.
    """
    if "torchvision" not in sys.modules:
        # Kept at module level: a Library's definitions are dropped when it is collected.
        global _TORCHVISION_OPS
        _TORCHVISION_OPS = torch.library.Library("torchvision", "DEF")
        _TORCHVISION_OPS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision.models

    return torchvision.models


def resnet18() -> torch.nn.Module:
    return _torchvision_models().resnet18(weights=None)


def mobilenet_v2() -> torch.nn.Module:
    return _torchvision_models().mobilenet_v2(weights=None)


def mobilenet_v3_small() -> torch.nn.Module:
    return _torchvision_models().mobilenet_v3_small(weights=None)


def efficientnet_b0() -> torch.nn.Module:
    return _torchvision_models().efficientnet_b0(weights=None)


def squeezenet1_1() -> torch.nn.Module:
    return _torchvision_models().squeezenet1_1(weights=None)


def shufflenet_v2_x0_5() -> torch.nn.Module:
    return _torchvision_models().shufflenet_v2_x0_5(weights=None)


def regnet_x_400mf() -> torch.nn.Module:
    return _torchvision_models().regnet_x_400mf(weights=None)


def mnasnet0_5() -> torch.nn.Module:
    return _torchvision_models().mnasnet0_5(weights=None)


def googlenet() -> torch.nn.Module:
    # Without the auxiliary classifiers (they only train); init_weights as the pretrained
    # builder would set it, and to silence torchvision's warning about its default.
    return _torchvision_models().googlenet(weights=None, aux_logits=False, init_weights=True)


def densenet121() -> torch.nn.Module:
    return _torchvision_models().densenet121(weights=None)


def convnext_tiny() -> torch.nn.Module:
    return _torchvision_models().convnext_tiny(weights=None)


def vit_tiny_d4() -> torch.nn.Module:
    """torchvision's own `VisionTransformer` at ViT-Ti/16 widths (Touvron et al. 2021, DeiT:
    hidden 192, 3 heads, MLP 768, 16x16 patches of a 224x224 image) with 4 of its 12 encoder
    layers. ViT-B/16 has the same ops (LayerNormalization, Gelu, MatMul of two activations,
    Softmax, Transpose/Reshape, the class token's Concat, Gather/Slice) at 86 M parameters
    and 17.6 GMAC, too slow for a test on two cores."""
    return _torchvision_models().VisionTransformer(
        image_size=224, patch_size=16, num_layers=4, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=1000
    )
