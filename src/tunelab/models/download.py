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
    fetch = _from_hf if source == "hf" else _from_modelscope
    return fetch(repo_id, revision, Path(to) if to else None)


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
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = hf_endpoint()
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
    return (
        f"model `{repo_id}` is not downloaded and {where} cannot be reached ({reason}); run "
        f"`{command_for(repo_id, source)}` where the hub can be reached (HF_ENDPOINT names a "
        "mirror), or set model.path to a local folder."
    )
