"""The ``forgeflow`` command line. ``forgeflow --help`` lists the commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, ensure_ascii=False, indent=2, default=str))
    else:
        print(obj)


def cmd_up(args: argparse.Namespace) -> int:
    from tasks import stack

    stack.start(timeout_s=args.timeout)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from tasks import stack

    stack.stop()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tasks import stack

    _print(stack.status(), True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tasks.demo import run_demo

    return run_demo(max_eval_samples=args.eval_samples, keep_running=not args.stop_after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="forgeflow", description="Forgeflow: raw text to a served, evaluated LLM."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start Airflow (standalone) and MLflow on 127.0.0.1")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for health")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop services, engines, Airflow and MLflow (whole process groups)")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="health of the stack")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("demo", help="run the whole chain through Airflow's REST API on the bundled data")
    p.add_argument("--eval-samples", type=int, default=40, help="test questions to evaluate")
    p.add_argument("--stop-after", action="store_true", help="stop everything when done")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear one-line error for the user; tracebacks are for bugs
        print(f"forgeflow {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
