"""The Python session of one documentation page, run by tests/doc_snippets.py in a process of
its own: it executes the page's `python` blocks in order in one namespace, as a reader
following the page in `python -m asyncio` would.

The event loop runs in a thread of its own for the whole page, so a server a block starts
(`server = await app.start(...)`) keeps serving while later blocks, or the shell commands
between them, call it. A block that awaits runs on that loop; any other runs here, in the main
thread, so a blocking client (SyncBlazeClient) may call a server on the loop.

Protocol: one JSON object per line on stdin, `{"code": ..., "name": ...}`; one JSON object per
line on stdout, `{"output": ..., "error": traceback or null}`.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import json
import sys
import threading
import traceback
from typing import Any


def main() -> None:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    namespace: dict[str, Any] = {"__name__": "__main__"}
    reply = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        captured = io.StringIO()
        error = None
        try:
            code = compile(
                request["code"], request["name"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
            )
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                result = eval(code, namespace)
                if asyncio.iscoroutine(result):
                    asyncio.run_coroutine_threadsafe(result, loop).result(timeout=120)
        except BaseException:
            error = traceback.format_exc()
        reply.write(json.dumps({"output": captured.getvalue(), "error": error}) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
