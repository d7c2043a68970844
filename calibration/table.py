"""The calibration table: the range of every activation tensor, and how it was found.

Written as JSON into every bundle (`calibration/table.json`); the quantizer uses exactly these
ranges and never re-calibrates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tapeout.compilers.errors import InvalidInput

TABLE_FORMAT = "tapeout.calibration-table.v1"


@dataclass(frozen=True)
class TensorRange:
    """The real-valued range [low, high] observed (or chosen) for one tensor."""

    low: float
    high: float


@dataclass(frozen=True)
class CalibrationTable:
    """Tensor name → range, with the method, its options and the calibration set digest."""

    ranges: Mapping[str, TensorRange]
    method: str
    set_digest: str
    sample_count: int
    options: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": TABLE_FORMAT,
                "method": self.method,
                "options": dict(self.options),
                "calibration_set": {"digest": self.set_digest, "count": self.sample_count},
                "ranges": {
                    name: [value.low, value.high] for name, value in sorted(self.ranges.items())
                },
            },
            indent=2,
            sort_keys=True,
        )

    def write(self, path: Path) -> Path:
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> "CalibrationTable":
        """Raises: InvalidInput naming the file and the field that is wrong."""
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidInput(f"{path}: not a readable calibration table ({error})") from error
        if not isinstance(document, dict) or document.get("format") != TABLE_FORMAT:
            raise InvalidInput(f"{path}: expected format {TABLE_FORMAT!r}")
        ranges: dict[str, TensorRange] = {}
        for name, value in document.get("ranges", {}).items():
            if (
                not isinstance(value, list)
                or len(value) != 2
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
                or value[0] > value[1]
            ):
                raise InvalidInput(
                    f"{path}: ranges.{name}: expected [low, high] finite numbers with "
                    f"low <= high, found {value!r}"
                )
            ranges[name] = TensorRange(float(value[0]), float(value[1]))
        calibration_set = document.get("calibration_set", {})
        return cls(
            ranges=ranges,
            method=str(document.get("method")),
            set_digest=str(calibration_set.get("digest")),
            sample_count=int(calibration_set.get("count", 0)),
            options=document.get("options", {}),
        )
