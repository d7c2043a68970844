"""The real-model suite: the architectures people deploy to inference chips, built as a user
would build them, for tests and benchmarks of every compiler.

    from real_models import ARCHITECTURES, FAST_TIER, build

    model = build("resnet18")                      # uint8 activations (ONNX Runtime's default)
    model = build("kws_ds_cnn", activations="int8")  # int8 activations (TFLite, Ethos-U)
    model.float_path, model.qdq_path               # fp32 ONNX, QDQ ONNX
    model.calibration, model.test_inputs           # float32 [samples, *input_shape[1:]]
    model.feeds()                                  # [{"input": sample}, ...] of the test inputs
    model.quantized                                # a tapeout QuantizedModel, for Compiler.compile
    with_batch(model.qdq_path, 64, out)            # the same model at batch 64, saved to out

`ARCHITECTURES` maps each name to an `Architecture` (factory file, input shape, source,
whether the output is class scores); `FAST_TIER` names the six in `make test`'s fast tier.
Every model has one input `input` (batch 1) and one output `output`. Built models are cached
under `.cache/real-models/` (see `real_models.build`): the first build of all sixteen takes
a few minutes, later runs read the files back.

In tests, the session fixture `real_model(name, activations="uint8")` (real_models.fixtures,
loaded by tests/conftest.py) returns the same objects.
"""

from real_models.architectures import ARCHITECTURES, FAST_TIER, Architecture
from real_models.build import INPUT, OUTPUT, RealModel, build, with_batch

__all__ = ["ARCHITECTURES", "FAST_TIER", "INPUT", "OUTPUT", "Architecture", "RealModel", "build",
           "with_batch"]
