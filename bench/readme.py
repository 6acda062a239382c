"""Generated sections of ``bench/README.md``: the text between a pair of named markers."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["finish", "publish", "replace_block"]


def replace_block(path: Path, name: str, markdown: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` only."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text()
    head, sep, rest = text.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not (sep and sep2):
        raise SystemExit(f"{path}: markers {begin} ... {end} not found")
    path.write_text(f"{head}{begin}\n{markdown}\n{end}{tail}")


def publish(
    results: dict[str, Any], name: str, markdown: str, out: Path | None, readme: Path | None
) -> Path:
    """Write ``results`` as JSON (default ``bench/results/<name>-<date>.json``), print the
    Markdown table and, given a README, replace its ``name`` block with it."""
    root = Path(__file__).resolve().parent
    path = out or root / "results" / f"{name}-{results['date'][:10]}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown)
    if readme is not None:
        replace_block(readme, name, markdown)
    return path


def finish(
    name: str,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    run: Callable[[argparse.Namespace, str], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
) -> int:
    """The end of a benchmark's ``main``: run it with the command line that started it,
    publish the results (``args.out``, ``args.readme``) and say where they went."""
    command = " ".join([f"python -m bench.{name}", *(sys.argv[1:] if argv is None else argv)])
    results = run(args, command)
    path = publish(results, name, render(results), args.out, args.readme)
    print(f"wrote {path}")
    return 0
