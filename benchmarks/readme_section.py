"""Replace one `## ` section of a benchmarks README with a script's regenerated text."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(readme: Path, heading: str, text: str) -> None:
    """Put `text` (which starts with `heading`) where the section under `heading` is, up to
    the next `## ` heading; append it when the README has no such section."""
    body = readme.read_text() if readme.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"{re.escape(heading)}\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(body):
        body = pattern.sub(lambda _: text.rstrip() + "\n", body)
    else:
        body = body.rstrip() + "\n\n" + text.rstrip() + "\n"
    readme.write_text(body)
