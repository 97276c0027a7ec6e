"""Ending an engine with everything it started, including children that left its process group.

torchrun starts each worker in a session of its own (``start_new_session=True`` in torch's elastic
subprocess handler), so ``killpg`` on the engine's group reaches torchrun but not its ranks; once torchrun
is gone the ranks are orphans that nobody waits for. The ranks are still torchrun's children while it
lives, so the process tree is collected first and every member is killed with the group.
"""

from __future__ import annotations

import contextlib
import os
import signal

import psutil


def group_tree(pgid: int) -> list[psutil.Process]:
    """Every live process of group ``pgid`` and all their descendants, wherever their group."""
    members: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if os.getpgid(p.pid) == pgid:
                members[p.pid] = p
                for child in p.children(recursive=True):
                    members[child.pid] = child
    return list(members.values())


def kill_tree(pgid: int) -> int:
    """SIGKILL group ``pgid`` and every descendant of its members; how many processes were signalled."""
    tree = group_tree(pgid)  # before the kill: orphaned children lose their link to the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(tree)
