"""Session fixtures of the real-model suite, loaded for every test by tests/conftest.py."""

from __future__ import annotations

import pytest

from real_models.build import RealModel, build


@pytest.fixture(scope="session")
def real_model():
    """`real_model(name, activations="uint8") -> RealModel`: a suite model, built once per
    session (and once per change of its inputs on disk, see real_models.build)."""
    built: dict[tuple[str, str], RealModel] = {}

    def get(name: str, activations: str = "uint8") -> RealModel:
        if (name, activations) not in built:
            built[name, activations] = build(name, activations)
        return built[name, activations]

    return get
