"""Start the server: load the models, bind the socket, run uvicorn until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal

from rich.console import Console

from tunelab.errors import TunelabError
from tunelab.listening import listen_on


def serve(
    targets: list[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    with_base: bool = False,
    max_batch: int = 8,
    max_tokens: int = 512,
    console: Console | None = None,
) -> None:
    """Serve the targets (run folders, model folders, aliases) until stopped."""
    if api_key is not None and not api_key.strip():
        raise TunelabError(
            "--api-key is empty, which no client could send; give a key, or leave the option "
            "out to serve without one."
        )
    try:
        import uvicorn

        from tunelab.serve.app import create_app
    except ImportError as exc:
        raise TunelabError(
            f"tunelab serve needs the `serve` extra ({exc.name} is missing); install it with "
            "`pip install 'tunelab[serve]'`."
        ) from exc
    from tunelab.inference.chat_model import open_chat_models
    from tunelab.serve.scheduler import Scheduler

    console = console or Console(stderr=True)
    sock = listen_on(host, port)  # before loading, so that a taken port fails at once
    models = open_chat_models(targets, with_base)
    checked = check_served_prompts(models, targets)
    app = create_app(models, Scheduler(max_batch), api_key, max_tokens)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    bound_port = sock.getsockname()[1]
    if checked:
        console.print(
            f"prompts checked: {', '.join(checked)} prompt as their training rendered",
            highlight=False,
        )
    console.print(
        f"serving {', '.join(models)} at http://{host}:{bound_port}/v1 "
        f"({'API key required' if api_key else 'no API key'}); Ctrl-C stops",
        highlight=False,
    )
    if host not in {"127.0.0.1", "localhost", "::1"} and not api_key:
        console.print(
            f"[yellow]note:[/] {host} is reachable from other machines and no --api-key is set."
        )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again with the
    # handler that was there before; this one makes that a normal exit.
    signal.signal(signal.SIGTERM, _stopped)
    uvicorn.Server(config).run(sockets=[sock])


def _stopped(signum, frame) -> None:
    raise SystemExit(0)


def check_served_prompts(models: dict, targets: list[str]) -> list[str]:
    """Refuse to serve a run whose prompt for a probe differs from what its training rendered
    (the served tokenizer or template is not the run's); returns the names checked."""
    from tunelab.exporters.parity import check_served_prompt
    from tunelab.inference.chat_model import served_names
    from tunelab.run import RunFolder, is_run_target

    checked = []
    for name, target in served_names(targets).items():
        if name in models and is_run_target(target):
            check_served_prompt(name, models[name], RunFolder.open(target).trained().recipe)
            checked.append(name)
    return checked
