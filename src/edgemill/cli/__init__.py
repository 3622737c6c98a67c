"""The `edgemill` command line: one entry point, one module per subcommand.

Exit codes: 0 ok, 1 user error, 2 usage, 3 verification refused. A user's mistake is one line on
stderr naming the value and the fix, never a traceback (set EDGEMILL_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .. import __version__
from ..errors import EdgemillError, UsageError, status_for
from . import (agent_cmd, bench_cmd, captures_cmd, compile_cmd, demo_cmd, emulator_cmd, fleet_cmds, inspect_cmd,
               keys_cmd, run_cmd, server_cmd, targets_cmd)
from .output import emit_json


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"edgemill: usage error: {message}. Fix: see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = _Parser(prog="edgemill", description="Compile models for edge devices, sign them, run them.")
    parser.add_argument("-V", "--version", action="version", version=f"edgemill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    compile_cmd.add_parser(sub, common)
    targets_cmd.add_parser(sub, common)
    inspect_cmd.add_parser(sub, common)
    run_cmd.add_parser(sub, common)
    bench_cmd.add_parser(sub, common)
    keys_cmd.add_parsers(sub, common)
    demo_cmd.add_parser(sub, common)
    agent_cmd.add_parser(sub, common)
    emulator_cmd.add_parsers(sub, common)
    server_cmd.add_parser(sub, common)
    fleet_cmds.add_parsers(sub, common)
    captures_cmd.add_parsers(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.handler(args) or 0)
        # Output shorter than the pipe buffer is still in it: flush here so a reader that went away
        # (`... --json | head`) is met by the handler below, not by the interpreter's flush at exit.
        sys.stdout.flush()
        return code
    except EdgemillError as exc:
        if getattr(args, "json", False):
            emit_json(exc.to_dict())
        kind = "usage error" if isinstance(exc, UsageError) else "error"
        print(f"edgemill: {kind}: {exc.one_line()}", file=sys.stderr)
        return status_for(exc).exit_code
    except KeyboardInterrupt:
        print("edgemill: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_pipe()
    except Exception as exc:  # a bug of ours, not the user's: say so, briefly
        if os.environ.get("EDGEMILL_DEBUG"):
            traceback.print_exc()
        print(f"edgemill: internal error: {type(exc).__name__}: {exc}. This is a bug in edgemill; "
              "rerun with EDGEMILL_DEBUG=1 and report the traceback.", file=sys.stderr)
        return 1


def _closed_pipe() -> int:
    """The reader went away (`edgemill inspect PKG --json | head`): stop quietly, as Unix tools do. Point
    stdout at /dev/null so the interpreter's final flush cannot fail again, and exit as a SIGPIPE would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a real file (tests capture it): nothing to flush
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
