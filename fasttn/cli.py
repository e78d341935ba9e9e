"""``fasttn`` command line: parses arguments and calls the public API, nothing more."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


# --------------------------------------------------------------------------- train
def _add_train_commands(sub: argparse._SubParsersAction) -> None:
    pass


# --------------------------------------------------------------------------- data
def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fasttn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_commands(sub)
    _add_data_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"fasttn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
