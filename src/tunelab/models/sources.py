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
        if _written_as_path(spec) and path.suffix.lower() != ".gguf":
            raise TunelabError(f"model folder {path} does not exist; check model.path.")
        return None
    if not (path / "config.json").is_file():
        raise TunelabError(
            f"model folder {path} has no config.json; is it a Hugging Face model folder?"
        )
    return ModelSource(spec, path)


def _written_as_path(spec: str) -> bool:
    """A spec no hub id looks like: absolute, relative to here or home, or deeper than one /."""
    return spec.startswith(("/", "./", "../", "~", ".\\")) or spec.count("/") > 1


def _gguf(spec: str) -> ModelSource | None:
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".gguf":
        return None
    if not path.is_file():
        raise TunelabError(f"model file {path} does not exist; check model.path.")
    return ModelSource(spec, path.parent, path.name)


def _hub_id(spec: str) -> ModelSource | None:
    """owner/name on the Hugging Face Hub (or HF_ENDPOINT's mirror): the cached copy, else a
    download; `modelscope:owner/name` from ModelScope."""
    from tunelab.models.download import MODELSCOPE_PREFIX, cached_snapshot, download

    if spec.startswith(MODELSCOPE_PREFIX):
        return ModelSource(spec, download(spec.removeprefix(MODELSCOPE_PREFIX), "modelscope"))
    if spec.count("/") != 1 or Path(spec).exists():
        return None
    return ModelSource(spec, cached_snapshot(spec) or download(spec))


RESOLVERS: list[Callable[[str], ModelSource | None]] = [
    _builtin,
    _local_folder,
    _gguf,
    _hub_id,
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
        "or a hub id (owner/name, or modelscope:owner/name); check the path."
    )
