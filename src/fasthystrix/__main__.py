"""``python -m fasthystrix``: the package's command line (``demo``: the scenario, live)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m fasthystrix`` and its subcommands."""
    from . import __version__, demo

    parser = argparse.ArgumentParser(
        prog="python -m fasthystrix",
        description="fasthystrix: latency and fault tolerance for Python services, with hystrix-go's semantics.",
    )
    parser.add_argument("--version", action="version", version=f"fasthystrix {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    demo_parser = commands.add_parser(
        "demo",
        help="watch a circuit breaker protect an API from its downstream, live, on loopback",
        description=demo.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 when the scenario ran to its end; 130 when stopped with Ctrl-C, after\n"
        "shutting everything down and printing a summary of what ran; 1 on an error; 2 on bad options.",
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(handler=demo.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        status: int = args.handler(args)
    except KeyboardInterrupt:
        # A second Ctrl-C while the demo shuts down (the first one is handled by the demo).
        print("\ninterrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
