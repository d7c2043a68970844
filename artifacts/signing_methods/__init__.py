"""The signing methods, one module each: its `Signer` (what signs: `SIGNER`) and, where its
signatures carry verification material of their own, its `Signature` (what such a `model.sig`
claims, and how a trust policy checks it: `SIGNATURE`). The protocols are in
tapeout.artifacts.signature.

A method is found by being a module here: adding one is adding a module. A method that signs
with a key held elsewhere (PKCS#11, which model-signing supports) writes the same verification
material as `key` or `certificate` and needs only its `SIGNER`.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    from tapeout.artifacts.signature import Signature, Signer


@functools.cache
def _modules() -> tuple:
    return tuple(
        importlib.import_module(f"{__name__}.{module.name}")
        for module in sorted(pkgutil.iter_modules(__path__), key=lambda module: module.name)
    )


def signer_types() -> dict[str, type[Signer]]:
    """Every signing method's name and its signer class."""
    return {module.SIGNER.method: module.SIGNER for module in _modules()}


def signature_types() -> tuple[type[Signature], ...]:
    """The signature classes, each recognising its own verification material."""
    return tuple(module.SIGNATURE for module in _modules() if getattr(module, "SIGNATURE", None) is not None)
