"""Runs `tunelab` commands for the tests as forks of one warm process.

A `tunelab train` child spends 7-10 s importing torch, transformers and peft before it does
anything. This process imports them once and then, for each request read from stdin, forks a
child that runs the real command line (`tunelab.cli.main`) with its own argv, working folder,
stdout and stderr files; the exit status goes to a file the test waits for. Nothing has run
on torch's threads here before a fork, so each child starts them afresh.

Only commands run in the tests' own environment come here (`tests.conftest.run_cli` sends any
other environment to a plain child process: the hub clients read theirs when imported).
"""

from __future__ import annotations

import json
import os
import select
import sys


def warm() -> None:
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import transformers.trainer  # noqa: F401

    import tunelab.cli  # noqa: F401
    import tunelab.exporters.merge  # noqa: F401
    import tunelab.inference.chat_model  # noqa: F401
    import tunelab.training.runner  # noqa: F401


def child(request: dict) -> None:
    """In the fork: become the command and exit with its status."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        opened = {}
        for fd, name in ((1, "stdout"), (2, "stderr")):
            path = request[name]  # stdout and stderr may be one file
            if path not in opened:
                opened[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            os.dup2(opened[path], fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        if "code" in request:  # a test's own script, as `python -c CODE ARGS`
            sys.argv = ["-c", *request["args"]]
            exec(compile(request["code"], "<test script>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = ["tunelab", *request["args"]]
            from tunelab.cli import main

            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as the command would report it
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    warm()
    print("ready", flush=True)
    waiting: dict[int, str] = {}  # child pid -> its status file
    stdin = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.05)
        _reap(waiting)
        if not readable:
            continue
        line = sys.stdin.readline()
        if not line:
            break
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            child(request)
        waiting[pid] = request["status"]
        print(pid, flush=True)


def _reap(waiting: dict[int, str]) -> None:
    for pid in list(waiting):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            path = waiting.pop(pid)
            with open(path + ".tmp", "w") as handle:
                handle.write(str(code))
            os.replace(path + ".tmp", path)


if __name__ == "__main__":
    serve()
