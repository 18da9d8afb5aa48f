"""lora-planner command line: thin; library errors become one line and exit code 2."""
from __future__ import annotations

import argparse
import sys

from ..errors import LoraPlannerError

EPILOG = """examples:
  lora-planner solve --model llama-2-7b --memory-budget 8GiB,16GiB,24GiB
  lora-planner solve --model llama-2-7b --memory-budget 12GiB:10,24GiB:2 -o plans/
  lora-planner profile llama-2-7b --batch-size 1 --seq-len 512 -o llama.json
  lora-planner estimate --model llama-2-7b --lora-config plans/client-0 --json
  lora-planner train --model all-minilm-l6-v2 --num-labels 77 --data train.csv --eval-data test.csv \
      --label-column category --memory-budget 100MiB,120MiB,200MiB --method fed-pilot --rounds 20 -o runs/b77

sizes: GiB/G = 2**30 bytes, GB = 10**9 bytes."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with a pointer to --help) and exit code 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message.rstrip('.')}. See `{self.prog} --help`.", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from . import estimate_cmd, partition_cmd, plot_cmd, profile_cmd, solve_cmd, train_cmd

    parser = OneLineParser(prog="lora-planner", description="Plan per-client LoRA layers and ranks under memory budgets.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"lora-planner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in (solve_cmd, profile_cmd, estimate_cmd, plot_cmd, partition_cmd, train_cmd):
        mod.register(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def as_flag(exc: LoraPlannerError, parser: argparse.ArgumentParser) -> LoraPlannerError:
    """The library names Python parameters (``batch_size``); on the command line, name the flag (``--batch-size``)."""
    flags = {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and a.option_strings[-1].startswith("--")}
    if exc.field in flags:
        return LoraPlannerError(flags[exc.field], exc.rule, exc.value, exc.fix)
    return exc


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except LoraPlannerError as exc:
        print(f"lora-planner {args.command}: error: {as_flag(exc, _command_parser(parser, args.command))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lora-planner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
