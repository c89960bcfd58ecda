"""`python -m engine <command>`: everything the app can do, headless.

Each area owns its subcommands in `engine/<area>/commands.py`, which exposes
`register(subparsers)`; every subparser sets `func=handler(args) -> int`. Heavy imports
(torch, pydicom, ...) happen inside handlers so `python -m engine --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

AREAS = (
    "engine.data.commands",
    "engine.models.commands",
    "engine.ssl.commands",
    "engine.fewshot.commands",
    "engine.fewshot.validation_commands",
    "engine.explain.commands",
    "engine.analysis.commands",
    "engine.study.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="scarce-cxr engine")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod_name in AREAS:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:  # an area not installed in this build
            if e.name != mod_name:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, OSError) as e:
        # User-causable errors carry a message that says what to fix; no traceback for those.
        print(f"error: {e}", file=sys.stderr)
        return 2
