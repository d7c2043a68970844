"""Plugins loaded from parallel threads in a fresh interpreter, as a build's targets load them.

Without one lock around plugin loading, about two cold starts in three failed here: importlib's
deadlock detector fired between the fp16 and onnxruntime plugins (CPython gh-83065), or a
plugin saw `onnx` partially initialised by another thread.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import threading
from tapeout.compilers.errors import TapeoutError
from tapeout.compilers.registry import load_compiler, registered_names

names = registered_names()
barrier = threading.Barrier(len(names))
errors = []

def load(name):
    barrier.wait()
    try:
        load_compiler(name)
    except TapeoutError as error:
        errors.append(str(error))

threads = [threading.Thread(target=load, args=(name,)) for name in names]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(len(names), errors)
"""


def test_every_plugin_loads_when_all_are_loaded_at_once_in_a_cold_process():
    for _ in range(5):
        result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        count, errors = result.stdout.strip().splitlines()[-1].split(" ", 1)
        assert int(count) >= 6 and errors == "[]", errors
