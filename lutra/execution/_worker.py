"""Worker process main: `python -m lutra.execution._worker <kind> <task_fd> <result_fd>`.

Reads pickled tasks from the parent (trusted direction), answers each with `serve(task)` of the kind's module,
and exits when the parent's pipe closes. `kind=sql`: `lutra.execution.sql.serve`.
"""

from __future__ import annotations

import importlib
import sys
from multiprocessing.connection import Connection


def main(argv: list[str]) -> None:
    kind, rfd, wfd = argv[0], int(argv[1]), int(argv[2])
    mod = importlib.import_module(f"lutra.execution.{kind}")
    init = getattr(mod, "worker_init", None)
    if init is not None:
        init()
    recv, send = Connection(rfd, writable=False), Connection(wfd, readable=False)
    send.send("ready")
    while True:
        try:
            task = recv.recv()
        except (EOFError, OSError):
            return
        send.send(mod.serve(task))


if __name__ == "__main__":
    main(sys.argv[1:])
