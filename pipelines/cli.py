"""The ``sparling`` command line.

Subcommands import what they need lazily, so ``sparling --help`` stays fast and a
problem in one stage never breaks another.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from sparling.errors import SparlingError


class UsageError(Exception):
    """A bad command-line value; printed without a traceback."""


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as YAML scalars (``3`` -> int, ``a`` -> str)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


# -- data ---------------------------------------------------------------------------------
def _cmd_data_generate(args: argparse.Namespace) -> int:
    from pipelines.generate import generate_dataset

    path = generate_dataset(
        args.domain,
        parse_assignments(args.param, "--param"),
        args.split,
        args.seed,
        args.count,
        args.shards,
        Path(args.out),
        progress=not args.quiet,
    )
    print(f"dataset ready: {path}")
    return 0


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from pipelines.fetch import fetch_dataset

    path = fetch_dataset(args.name, Path(args.to), url=args.url)
    print(f"{args.name} ready in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparling",
        description="Sparling experiments: data generation, training, sweeps and reports.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate or fetch datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    gen = data_sub.add_parser(
        "generate", help="generate a sharded dataset with one Ray task per shard"
    )
    gen.add_argument("--domain", required=True, help="digit-circle, latex-ocr or audio-digits")
    gen.add_argument(
        "--param", action="append", metavar="K=V", help="a domain parameter (repeatable)"
    )
    gen.add_argument("--split", required=True, choices=["train", "val", "test"])
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--count", type=int, required=True, help="number of samples")
    gen.add_argument("--shards", type=int, default=1, help="number of shards (one Ray task each)")
    gen.add_argument("--out", required=True, help="dataset folder")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_cmd_data_generate)

    fetch = data_sub.add_parser("fetch", help="download a recorded-speech dataset")
    fetch.add_argument("name", choices=["audiomnist", "fsdd"])
    fetch.add_argument("--to", required=True, help="folder to put it in")
    fetch.add_argument(
        "--url", help="another source for the archive (e.g. file:// of a copy fetched elsewhere)"
    )
    fetch.set_defaults(func=_cmd_data_fetch)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (UsageError, SparlingError, ValueError, FileNotFoundError, FileExistsError) as e:
        # Errors that name the bad input: show the message, not a traceback.
        print(f"sparling {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
