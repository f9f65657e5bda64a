"""Models from the Hugging Face Hub (or a mirror named by HF_ENDPOINT) and from ModelScope,
fetched by each hub's own client into its own cache, or into a folder of the user's choosing.

A failure is one sentence: the repository is not there, the revision is not, or the hub
cannot be reached, with the exact command to run where it can.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.errors import TunelabError

SOURCES = ("hf", "modelscope")
MODELSCOPE_PREFIX = "modelscope:"


def download(repo_id: str, source: str = "hf", revision: str | None = None, to=None) -> Path:
    """The model's folder, downloaded (or found up to date in the hub's cache)."""
    if source not in SOURCES:
        raise TunelabError(f"--from {source} is not one of {', '.join(SOURCES)}.")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise TunelabError(f"`{repo_id}` is not a model id; write it as owner/name.")
    to = Path(to) if to else None
    if to is not None and to.exists() and not to.is_dir():
        raise TunelabError(f"--to {to} is a file; give a new or empty folder to put the model in.")
    if to is not None and to.exists() and any(to.iterdir()) and not (to / "config.json").exists():
        raise TunelabError(f"--to {to} holds other files; give an empty or new folder.")
    fetch = _from_hf if source == "hf" else _from_modelscope
    return fetch(repo_id, revision, to)


def command_for(repo_id: str, source: str = "hf") -> str:
    """The command that downloads this model."""
    return f"tunelab download {repo_id}" + (" --from modelscope" if source != "hf" else "")


def hf_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def cached_snapshot(repo_id: str) -> Path | None:
    """The model's folder in the local Hugging Face cache, without going online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _from_hf(repo_id: str, revision: str | None, to: Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise TunelabError(f"`{repo_id}` is not a model id: {_first_sentence(exc)}") from None
    where = hf_endpoint()
    _set_timeouts()
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_dir=to))
    except RepositoryNotFoundError:
        raise TunelabError(
            f"there is no model `{repo_id}` at {where} (a private or gated one needs "
            "`hf auth login` first); check the id."
        ) from None
    except RevisionNotFoundError:
        raise TunelabError(f"`{repo_id}` has no revision `{revision}` at {where}.") from None
    except LocalEntryNotFoundError as exc:
        raise TunelabError(_unreachable(repo_id, where, exc, "hf")) from None


def _first_sentence(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text.split(". ")[0].rstrip(".") + "."


# A hub that takes the connection and never answers would hold a download for ever: each
# request waits at most this long for a connection, and for each read (TUNELAB_HUB_TIMEOUT).
CONNECT_SECONDS = 10.0


def _set_timeouts() -> None:
    """huggingface_hub's shared HTTP client, with a timeout on every request where it gives
    none (it has none by default, and passes none for its repository listing)."""
    from huggingface_hub.utils import _http

    read = float(os.environ.get("TUNELAB_HUB_TIMEOUT") or 30)
    limits = {"connect": min(CONNECT_SECONDS, read), "read": read, "write": read, "pool": read}

    def timed(request) -> None:
        given = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: given.get(k) or v for k, v in limits.items()}

    def client():
        made = _http.default_client_factory()
        made.event_hooks["request"].append(timed)
        return made

    _http.set_client_factory(client)


def _from_modelscope(repo_id: str, revision: str | None, to: Path | None) -> Path:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise TunelabError(
            "downloading from ModelScope needs its client: pip install 'tunelab[hub]' "
            "(or pip install modelscope)."
        ) from None
    where = os.environ.get("MODELSCOPE_ENDPOINT") or "ModelScope"
    options = {"revision": revision} if revision else {}
    try:
        return Path(snapshot_download(repo_id, local_dir=str(to) if to else None, **options))
    except Exception as exc:  # its client raises requests' and its own errors alike
        text = str(exc)
        if "404" in text or "not found" in text.lower() or "not exist" in text.lower():
            raise TunelabError(f"there is no model `{repo_id}` at {where}; check the id.") from None
        raise TunelabError(_unreachable(repo_id, where, exc, "modelscope")) from None


def _unreachable(repo_id: str, where: str, exc: Exception, source: str) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    offline = "offline mode (HF_HUB_OFFLINE) is on" if "offline" in str(cause).lower() else None
    reason = offline or (str(cause).splitlines() or [type(cause).__name__])[0][:160]
    if "timed out" in reason.lower():
        seconds = os.environ.get("TUNELAB_HUB_TIMEOUT") or "30"
        reason = f"it did not answer within {seconds} s; TUNELAB_HUB_TIMEOUT sets the wait"
    return (
        f"model `{repo_id}` is not downloaded and {where} cannot be reached ({reason}); run "
        f"`{command_for(repo_id, source)}` where the hub can be reached (HF_ENDPOINT names a "
        "mirror), or set model.path to a local folder."
    )
