"""The compiler contract and the firmware image: determinism, refusal, bounds, budget,
compatibility report, plugin discovery, and a loader fuzz test."""

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import numpy as np
import onnx
import pytest

import int8_ref_models as M
from tapeout.compilers.errors import (CompilationFailed, InvalidInput, TapeoutError,
                                      UnsupportedOperator)
from tapeout.compilers.interface import Compiler, Runner
from tapeout.compilers.int8_ref import (ARTIFACT_FILE, FIRMWARE_REVISION, ArtifactRejected,
                                        FirmwareTooOld, IncompatibleModel, Int8ReferenceCompiler,
                                        compatibility_report, load_file)
from tapeout.compilers.int8_ref.artifact_format import HEADER, image_digest, read_image


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("cnn")
    model = M.cnn()
    return model, M.quantize_qdq(model, d, "cnn")


@pytest.fixture(scope="module")
def artifact(cnn, tmp_path_factory):
    model, qdq = cnn
    compiler, art = M.compile_path(qdq, M.input_specs(model), tmp_path_factory.mktemp("a"))
    return art


def test_plugin_protocol_and_entry_point():
    c = Int8ReferenceCompiler()
    assert isinstance(c, Compiler)
    assert c.name == "int8-ref"
    eps = {e.name: e for e in entry_points(group="tapeout.compilers")}
    assert eps["int8-ref"].load() is Int8ReferenceCompiler
    caps = c.capabilities()
    assert {"Conv", "Gemm", "MatMul", "QLinearConv", "com.microsoft.QGemm"} <= caps.operators
    assert caps.options["requant"] == ("ort", "fixed-point")
    assert caps.firmware_range == ("2.0.0", None)
    assert FIRMWARE_REVISION == "2.0.0"  # reads format 3 (packed Conv/Gemm weights)


def test_artifact_fields(artifact):
    assert artifact.files == (ARTIFACT_FILE,)
    assert artifact.artifact_id.startswith("int8-ref-0.2.0-")
    assert len(artifact.artifact_id.rsplit("-", 1)[1]) == 12
    assert artifact.minimum_firmware_revision == "2.0.0"
    assert artifact.options == {"requant": "fixed-point"}
    rep = artifact.report
    assert rep["peak_memory_bytes"] == rep["arena_bytes"] + rep["scratch_bytes"] > 0
    json.dumps(dict(rep))  # JSON-serialisable
    assert [t.name for t in artifact.inputs] == ["input"]
    assert artifact.outputs[0].dtype == "float32"
    raw = (artifact.directory / ARTIFACT_FILE).read_bytes()
    assert raw[:8] == b"INT8REF\0"
    assert raw[12] == 1  # fixed-point recorded in the header
    assert raw[64:72] == b"int8-ref"


def test_runner_protocol_and_input_checks(artifact):
    runner = Int8ReferenceCompiler().load(artifact)
    assert isinstance(runner, Runner)
    x = np.zeros((1, 1, 16, 16), np.float32)
    out = runner.run({"input": x})
    name = artifact.outputs[0].name
    assert list(out) == [name] and out[name].shape == (1, 10)
    with pytest.raises(InvalidInput, match="shape"):
        runner.run({"input": np.zeros((2, 1, 16, 16), np.float32)})
    with pytest.raises(InvalidInput, match="expected"):
        runner.run({"other": x})


def test_same_inputs_give_byte_identical_artifact(cnn, tmp_path):
    model, qdq = cnn
    for mode in ("ort", "fixed-point"):
        _, a = M.compile_path(qdq, M.input_specs(model), tmp_path / f"{mode}1", mode)
        _, b = M.compile_path(qdq, M.input_specs(model), tmp_path / f"{mode}2", mode)
        assert (a.directory / ARTIFACT_FILE).read_bytes() == \
            (b.directory / ARTIFACT_FILE).read_bytes()
        assert a.artifact_id == b.artifact_id
    assert (tmp_path / "ort1" / ARTIFACT_FILE).read_bytes() != \
        (tmp_path / "fixed-point1" / ARTIFACT_FILE).read_bytes()


def test_options_are_checked(cnn, tmp_path):
    from tapeout.compilers.interface import QuantizedModel, TargetProfile

    model, qdq = cnn
    qm = QuantizedModel(qdq, "", qdq, M.input_specs(model), ())
    c = Int8ReferenceCompiler()
    with pytest.raises(InvalidInput, match="requant"):
        c.compile(qm, TargetProfile("t", "int8-ref", "1.0.0", {"requant": "float"}), tmp_path)
    with pytest.raises(InvalidInput, match="unknown"):
        c.compile(qm, TargetProfile("t", "int8-ref", "1.0.0", {"turbo": "1"}), tmp_path)
    with pytest.raises(CompilationFailed, match="0.9.0"):
        c.compile(qm, TargetProfile("t", "int8-ref", "0.9.0"), tmp_path)


def test_firmware_refuses_newer_artifact(artifact, tmp_path):
    raw = (artifact.directory / ARTIFACT_FILE).read_bytes()
    # the same image, as if a newer compiler had required firmware 2.1.0
    header = bytearray(raw[:HEADER.size])
    header[16:22] = np.array([2, 1, 0], "<u2").tobytes()
    header[32:64] = image_digest(bytes(header), raw[HEADER.size:])
    path = tmp_path / ARTIFACT_FILE
    path.write_bytes(bytes(header) + raw[HEADER.size:])
    with pytest.raises(FirmwareTooOld) as exc:
        load_file(path)
    assert "2.1.0" in str(exc.value) and FIRMWARE_REVISION in str(exc.value)
    assert isinstance(exc.value, TapeoutError)
    # and an older runtime refuses today's artifact
    with pytest.raises(FirmwareTooOld, match="0.9.0"):
        read_image(raw, "x", firmware_revision="0.9.0")


def test_truncated_oversized_corrupted(artifact):
    raw = (artifact.directory / ARTIFACT_FILE).read_bytes()
    with pytest.raises(ArtifactRejected, match="truncated"):
        read_image(raw[:50])
    with pytest.raises(ArtifactRejected, match="truncated"):
        read_image(raw[:-1])
    with pytest.raises(ArtifactRejected, match="oversized"):
        read_image(raw + b"\0")
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x40
    with pytest.raises(ArtifactRejected, match="digest"):
        read_image(bytes(flipped))
    with pytest.raises(ArtifactRejected, match="magic"):
        read_image(b"NOTANI8R" + raw[8:])


def test_wrong_compiler_is_refused(artifact, tmp_path):
    import dataclasses

    raw = (artifact.directory / ARTIFACT_FILE).read_bytes()
    header = bytearray(raw[:HEADER.size])
    header[64:88] = b"someone-else".ljust(24, b"\0")
    header[32:64] = image_digest(bytes(header), raw[HEADER.size:])
    (tmp_path / ARTIFACT_FILE).write_bytes(bytes(header) + raw[HEADER.size:])
    with pytest.raises(ArtifactRejected, match="someone-else"):
        Int8ReferenceCompiler().load(dataclasses.replace(artifact, directory=tmp_path))


def test_memory_budget_is_reported_with_its_op_not_refused(cnn, tmp_path):
    """The compiler reports the peak and the op where it is, whatever the budget: the pipeline
    gates peak_memory_bytes against memory_budget_bytes (docs/accuracy.md)."""
    model, qdq = cnn
    _, small = M.compile_path(qdq, M.input_specs(model), tmp_path / "small", budget=2048)
    _, big = M.compile_path(qdq, M.input_specs(model), tmp_path / "big", budget=1 << 20)
    assert small.report["peak_memory_bytes"] == big.report["peak_memory_bytes"] > 2048
    peak = small.report["peak_memory_op"]
    assert peak == big.report["peak_memory_op"]
    assert peak["node"] in {node.name for node in onnx.load(str(qdq)).graph.node}
    assert 0 < peak["live_bytes"] + peak["scratch_bytes"] <= small.report["peak_memory_bytes"]


def test_memory_plan_reuses_the_arena(tmp_path):
    model = M.resnet()
    qdq = M.quantize_qdq(model, tmp_path, "resnet")
    _, art = M.compile_path(qdq, M.input_specs(model), tmp_path / "o")
    from tapeout.compilers.int8_ref.artifact_format import read_image as ri

    img = ri((art.directory / ARTIFACT_FILE).read_bytes())
    total = sum(t.nbytes for t in img.tensors)
    assert img.arena_bytes < total  # liveness lets tensors share bytes
    # no two tensors live at the same op overlap
    live = {}
    for i, op in enumerate(img.ops):
        for t in (*op.inputs, op.output):
            live.setdefault(t, [i, i])
            live[t][1] = i
    for t in img.outputs:
        live[t][1] = len(img.ops)
    for a in live:
        for b in live:
            if a < b and live[a][0] <= live[b][1] and live[b][0] <= live[a][1]:
                ta, tb = img.tensors[a], img.tensors[b]
                assert ta.offset + ta.nbytes <= tb.offset or tb.offset + tb.nbytes <= ta.offset


def _unsupported_model():
    b = M._Builder(0)
    x = b.conv("input", 1, 4)
    x = b.op("Hardmax", [x])
    x = b.op("LpNormalization", [x])
    x = b.op("Resize", [x, "", b.const(np.array([1, 1, 2, 2], np.float32), "s")], mode="linear")
    return b.model((1, 1, 8, 8), x)


def test_unsupported_ops_are_all_named(tmp_path):
    model = _unsupported_model()
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    problems = compatibility_report(path)
    assert [(p.node, p.op_type) for p in problems] == [
        ("hardmax4", "Hardmax"), ("lpnormalization5", "LpNormalization"), ("resize7", "Resize")]
    assert problems[2].attribute == "mode" and "linear" in problems[2].reason
    from tapeout.compilers.interface import QuantizedModel, TargetProfile

    qm = QuantizedModel(path, "", path, M.input_specs(model), ())
    with pytest.raises(IncompatibleModel) as exc:
        Int8ReferenceCompiler().compile(qm, TargetProfile("t", "int8-ref", FIRMWARE_REVISION), tmp_path)
    assert isinstance(exc.value, UnsupportedOperator)
    for name in ("hardmax4", "lpnormalization5", "resize7"):
        assert name in str(exc.value)
    assert exc.value.exit_code == 2


def test_float_model_is_reported(tmp_path):
    """An unquantized model: the first compute node is named, with the reason."""
    model = M.cnn()
    path = tmp_path / "fp32.onnx"
    onnx.save(model, str(path))
    problems = compatibility_report(path)
    assert problems and problems[0].op_type == "Conv" and "float" in problems[0].reason


def test_loader_counts_every_kernels_loops_against_the_work_bounds(artifact, monkeypatch):
    """Each op's loop iterations (its kernel's `work`) are counted at load: an op over the
    per-op bound, or an image over the per-image bound, is refused naming it. The bounds are
    lowered here to the example network's own work, so both sides of each are tested."""
    from tapeout.compilers.int8_ref import validate
    from tapeout.compilers.int8_ref.opset import KERNELS

    raw = (artifact.directory / ARTIFACT_FILE).read_bytes()
    img = read_image(raw)
    works = []
    for op in img.ops:
        kernel = KERNELS[op.kind]
        params = dict(zip(kernel.params, op.ints))
        works.append(kernel.work(params))
        assert works[-1] >= kernel.cost(params)[0]  # the loops include every MAC
    heaviest = works.index(max(works))
    monkeypatch.setattr(validate, "MAX_OP_WORK", max(works) - 1)
    with pytest.raises(ArtifactRejected,
                       match=rf"op {heaviest} .*loops would run {max(works)} iterations"):
        read_image(raw, "x.i8r")
    monkeypatch.setattr(validate, "MAX_OP_WORK", max(works))
    monkeypatch.setattr(validate, "MAX_IMAGE_WORK", sum(works) - 1)
    with pytest.raises(ArtifactRejected, match=rf"would run {sum(works)} iterations in all"):
        read_image(raw, "x.i8r")
    monkeypatch.setattr(validate, "MAX_IMAGE_WORK", sum(works))
    assert read_image(raw).ops == img.ops


FUZZ = textwrap.dedent('''
    import sys, hashlib, random
    import numpy as np
    from tapeout.compilers.int8_ref.artifact_format import read_image, HEADER, image_digest
    from tapeout.compilers.int8_ref.runtime import Int8Runner
    from tapeout.compilers.int8_ref.exceptions import ArtifactRejected
    raw = open(sys.argv[1], "rb").read()
    n, seed, fix = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    rng = random.Random(seed)
    counts = {"rejected": 0, "accepted": 0, "unchanged": 0}
    for i in range(n):
        buf = bytearray(raw)
        kind = rng.random()
        if kind < 0.3:
            buf = buf[:rng.randrange(len(buf))]
        elif kind < 0.4:
            buf += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            for _ in range(rng.randrange(1, 8)):
                pos = rng.randrange(HEADER.size if fix else 0, len(buf))
                buf[pos] ^= rng.randrange(1, 256)  # always changes the byte
        if bytes(buf) == raw:  # two flips of one byte can cancel out
            counts["unchanged"] += 1
            continue
        if fix and len(buf) >= HEADER.size:  # a forger who recomputes the digest
            import struct
            buf[24:32] = struct.pack("<Q", len(buf) - HEADER.size)
            buf[32:64] = image_digest(bytes(buf[:HEADER.size]), bytes(buf[HEADER.size:]))
        try:
            img = read_image(bytes(buf), "fuzz")
        except ArtifactRejected:
            counts["rejected"] += 1
            continue
        r = Int8Runner(img)  # accepted: must run without touching memory it does not own
        feed = {}
        for t in img.inputs:
            e = img.tensors[t]
            feed[e.name] = np.zeros(e.shape, e.dtype)
        r.run(feed)
        counts["accepted"] += 1
    print(counts)
''')


@pytest.mark.parametrize("fix_digest", [False, True], ids=["raw", "digest-recomputed"])
def test_loader_fuzz_never_crashes(artifact, tmp_path, fix_digest):
    """Random truncations, extensions and byte flips: ArtifactRejected or a clean run, in a
    subprocess so a crash would show as a signal, not take the test session down."""
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    path = artifact.directory / ARTIFACT_FILE
    proc = subprocess.run([sys.executable, str(script), str(path), "1000", "7",
                           "1" if fix_digest else "0"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 - our own output
    assert sum(counts.values()) == 1000
    if not fix_digest:
        assert counts["accepted"] == 0


def test_dynamic_batch_is_compatible(cnn, tmp_path):
    """A symbolic batch dimension is not an incompatibility; compile fixes it."""
    model, qdq = cnn
    m = onnx.load(str(qdq))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    path = tmp_path / "dyn.onnx"
    onnx.save(m, str(path))
    assert compatibility_report(path) == []


def test_quantization_problems_are_all_named(tmp_path):
    """Two independent float (unquantized) branches are both reported; nodes that only
    depend on a failed node are not."""
    b = M._Builder(0)
    a = b.op("Relu", [b.conv("input", 1, 2)])
    c = b.conv("input", 1, 2)
    model = b.model((1, 1, 6, 6), [a, c])
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    problems = compatibility_report(path)
    assert sorted(p.node for p in problems) == ["conv3", "conv7"]  # not relu4
    assert all("float" in p.reason for p in problems)
