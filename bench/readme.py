"""Generated sections of ``bench/README.md``: the text between a pair of named markers."""

from __future__ import annotations

from pathlib import Path

__all__ = ["replace_block"]


def replace_block(path: Path, name: str, markdown: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` only."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text()
    head, sep, rest = text.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not (sep and sep2):
        raise SystemExit(f"{path}: markers {begin} ... {end} not found")
    path.write_text(f"{head}{begin}\n{markdown}\n{end}{tail}")
