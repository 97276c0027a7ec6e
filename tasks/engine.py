"""The spec-file contract every engine follows: ``python -m <engine> SPEC_URI``.

The engine validates the spec, does its work and writes ``result.json`` beside the spec, with
``status`` = success | failed | stopped. The exit code is 0 on success, 2 for a bad spec, 1 for a failed
run and 3 for a run stopped on request (SIGTERM) before it finished: its ``error`` says where it got to
(for training: the checkpoint to resume from), and it registered nothing.

Under torchrun (RANK set) every process runs the engine and exits with its own code, but only rank 0
writes a success, and not over another rank's failure in the same attempt; a failing rank writes its
failure unless one of this attempt is already there (the first is usually the cause; a rank killed by
the launcher writes nothing), replacing a success rank 0 wrote first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tasks.storage import Lake, to_uri

S = TypeVar("S", bound=BaseModel)
log = logging.getLogger("forgeflow.engine")


class SpecError(ValueError):
    """A spec that does not validate; the message names the file and each bad field."""


class EngineStopped(Exception):
    """The engine was asked to stop and stopped cleanly; ``result`` says how far it got."""

    def __init__(self, message: str, result: dict[str, Any] | None = None):
        super().__init__(message)
        self.result = result or {}


EXIT_STOPPED = 3


def result_uri_for(spec_uri: str) -> str:
    return spec_uri.rsplit("/", 1)[0] + "/result.json"


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: {err.error_count()} invalid field(s)"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  - {loc}: {e['msg']}")
    return "\n".join(lines)


def load_spec(spec_uri: str, cls: type[S], lake: Lake | None = None) -> S:
    lake = lake or Lake.from_settings()
    uri = to_uri(spec_uri)
    try:
        raw = lake.read_json(uri)
    except ValueError as e:
        raise SpecError(f"{uri}: not valid JSON ({e})") from e
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_validation_error(uri, e)) from e


def write_spec(spec: BaseModel, spec_uri: str, lake: Lake | None = None) -> str:
    lake = lake or Lake.from_settings()
    lake.write_text(spec_uri, spec.model_dump_json(indent=2))
    return spec_uri


def process_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    value = os.environ.get("RANK", "0")
    return int(value) if value.isdigit() else 0


def _attempt() -> str | None:
    """torchrun's restart count (elastic jobs restart every rank after a failure); None outside torchrun."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT")


def _failed_in_this_attempt(lake: Lake, result_uri: str) -> bool:
    if "RANK" not in os.environ or not lake.exists(result_uri):
        return False
    result = lake.read_json(result_uri)
    return result.get("status") == "failed" and result.get("attempt") == _attempt()


def _write_failure(lake: Lake, result_uri: str, failure: dict[str, Any]) -> None:
    rank = process_rank()
    if "RANK" in os.environ:
        failure = {**failure, "attempt": _attempt()}
    if rank == 0:
        lake.write_json(result_uri, failure)
    elif not _failed_in_this_attempt(lake, result_uri):
        lake.write_json(result_uri, {**failure, "error": f"rank {rank}: {failure['error']}"})


def engine_main(cls: type[S], run: Callable[[S], dict[str, Any]], argv: list[str] | None = None) -> int:
    """Parse argv, run the engine on the spec and record its result. Returns the exit code."""
    parser = argparse.ArgumentParser(description=f"Run the {cls.__name__} engine on a spec file.")
    parser.add_argument("spec", help="path or lake URI of the spec JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    lake = Lake.from_settings()
    spec_uri = to_uri(args.spec)
    result_uri = result_uri_for(spec_uri)
    started = time.time()
    try:
        spec = load_spec(spec_uri, cls, lake)
    except SpecError as e:
        log.error("%s", e)
        _write_failure(lake, result_uri, {"status": "failed", "error": str(e)})
        return 2
    try:
        result = run(spec)
    except EngineStopped as e:
        log.warning("engine stopped: %s", e)
        if process_rank() == 0:  # every rank stops at the same step; one result
            lake.write_json(
                result_uri,
                {
                    **e.result,
                    "status": "stopped",
                    "error": str(e),
                    "seconds": round(time.time() - started, 3),
                },
            )
        return EXIT_STOPPED
    except Exception as e:  # the result file carries the failure to the orchestrator
        log.error("engine failed: %s\n%s", e, traceback.format_exc())
        _write_failure(
            lake,
            result_uri,
            {"status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": time.time() - started},
        )
        return 1
    if process_rank() == 0 and _failed_in_this_attempt(lake, result_uri):
        log.error("another rank failed in this attempt; its failure stays in %s", result_uri)
    elif process_rank() == 0:
        lake.write_json(
            result_uri, {"status": "success", "seconds": round(time.time() - started, 3), **result}
        )
        log.info("result written to %s", result_uri)
    return 0
