"""Where a model comes from: an ordered list of resolvers, the first that claims it wins."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.models.builtin import BUILTIN_ALIAS, builtin_model_dir


@dataclass
class ModelSource:
    """A loadable model: a folder, and the GGUF file inside it if it is one."""

    spec: str
    folder: Path
    gguf_file: str | None = None
    trust_remote_code: bool = False  # run code shipped in the folder (the recipe asked)


def _builtin(spec: str) -> ModelSource | None:
    if spec != BUILTIN_ALIAS:
        return None
    return ModelSource(spec, builtin_model_dir())


def _local_folder(spec: str) -> ModelSource | None:
    path = Path(spec).expanduser()
    if not path.is_dir():
        return None
    if not (path / "config.json").is_file():
        raise TunelabError(
            f"model folder {path} has no config.json; is it a Hugging Face model folder?"
        )
    return ModelSource(spec, path)


def _gguf(spec: str) -> ModelSource | None:
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".gguf":
        return None
    if not path.is_file():
        raise TunelabError(f"model file {path} does not exist; check model.path.")
    return ModelSource(spec, path.parent, path.name)


def _cached_hub_id(spec: str) -> ModelSource | None:
    if spec.count("/") != 1 or Path(spec).exists():
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(spec, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise TunelabError(
            f"model `{spec}` is not in the local Hugging Face cache and tunelab never downloads "
            f"at run time; fetch it first with `hf download {spec}` or set model.path to a folder."
        ) from None
    return ModelSource(spec, Path(folder))


RESOLVERS: list[Callable[[str], ModelSource | None]] = [
    _builtin,
    _local_folder,
    _gguf,
    _cached_hub_id,
]


def resolve_model(spec: str, trust_remote_code: bool = False) -> ModelSource:
    """Find the model that model.path names; its own code runs only with `trust_remote_code`
    (model.trust_remote_code in the recipe)."""
    for resolver in RESOLVERS:
        source = resolver(spec)
        if source is not None:
            source.trust_remote_code = trust_remote_code
            return source
    raise TunelabError(
        f"model.path `{spec}` is not the built-in `{BUILTIN_ALIAS}`, a local folder, a .gguf file, "
        "or a hub id (owner/name); check the path."
    )
