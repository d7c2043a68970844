"""The suite's architectures: what each is, where its factory lives, its input shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCHVISION = HERE / "torchvision_zoo.py"
MLPERF_TINY = HERE / "mlperf_tiny.py"


@dataclass(frozen=True)
class Architecture:
    """One network of the suite.

    `factory_file`:`name` is the model factory tapeout's PyTorch front end calls (a function
    of that name in that file). `input_shape` has batch 1. `classifier` is False where the
    output is not class scores (the autoencoder), so top-1 agreement means nothing there.
    """

    name: str
    factory_file: Path
    input_shape: tuple[int, ...]
    source: str
    classifier: bool = True


IMAGENET = (1, 3, 224, 224)

ARCHITECTURES: dict[str, Architecture] = {
    architecture.name: architecture
    for architecture in (
        # MLPerf Tiny v0.5 reference networks (Banbury et al. 2021), written in mlperf_tiny.py
        Architecture("kws_ds_cnn", MLPERF_TINY, (1, 1, 49, 10), "MLPerf Tiny keyword spotting, DS-CNN"),
        Architecture("vww_mobilenet_v1", MLPERF_TINY, (1, 3, 96, 96), "MLPerf Tiny visual wake words, MobileNetV1 0.25"),
        Architecture("ic_resnet8", MLPERF_TINY, (1, 3, 32, 32), "MLPerf Tiny image classification, ResNet-8 (CIFAR-10)"),
        Architecture(
            "ad_autoencoder", MLPERF_TINY, (1, 640), "MLPerf Tiny anomaly detection, FC autoencoder", classifier=False
        ),
        # torchvision 0.28.0 classification networks, ImageNet-sized
        Architecture("resnet18", TORCHVISION, IMAGENET, "torchvision resnet18"),
        Architecture("mobilenet_v2", TORCHVISION, IMAGENET, "torchvision mobilenet_v2"),
        Architecture("mobilenet_v3_small", TORCHVISION, IMAGENET, "torchvision mobilenet_v3_small"),
        Architecture("efficientnet_b0", TORCHVISION, IMAGENET, "torchvision efficientnet_b0"),
        Architecture("squeezenet1_1", TORCHVISION, IMAGENET, "torchvision squeezenet1_1"),
        Architecture("shufflenet_v2_x0_5", TORCHVISION, IMAGENET, "torchvision shufflenet_v2_x0_5"),
        Architecture("regnet_x_400mf", TORCHVISION, IMAGENET, "torchvision regnet_x_400mf"),
        Architecture("mnasnet0_5", TORCHVISION, IMAGENET, "torchvision mnasnet0_5"),
        Architecture("googlenet", TORCHVISION, IMAGENET, "torchvision googlenet (no auxiliary classifiers)"),
        Architecture("densenet121", TORCHVISION, IMAGENET, "torchvision densenet121"),
        Architecture("convnext_tiny", TORCHVISION, IMAGENET, "torchvision convnext_tiny"),
        Architecture("vit_tiny_d4", TORCHVISION, IMAGENET, "torchvision VisionTransformer, ViT-Ti/16 widths, 4 layers"),
    )
}

# The fast tier: the four MLPerf Tiny networks and two ImageNet-sized ones.
FAST_TIER = ("kws_ds_cnn", "vww_mobilenet_v1", "ic_resnet8", "ad_autoencoder", "resnet18", "mobilenet_v2")
