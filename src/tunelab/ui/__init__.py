"""The web UI: `tunelab ui`."""

from __future__ import annotations

from pathlib import Path


def open_ui(root: Path, host: str, port: int, auth: str | None, share: bool) -> None:
    """`tunelab ui`: the page served from `root` (gradio, the ui extra, must be installed)."""
    import importlib.util

    from tunelab.errors import TunelabError

    if importlib.util.find_spec("gradio") is None:
        raise TunelabError(
            "`tunelab ui` needs gradio, which is not installed; install the ui extra with "
            "`pip install 'tunelab[ui]'`."
        )
    from tunelab.quiet import quiet_libraries
    from tunelab.ui.app import serve

    quiet_libraries()
    if not root.is_dir():
        raise TunelabError(f"--root {root} is not a folder; give the folder your runs are in.")
    serve(root, host, port, auth, share)
