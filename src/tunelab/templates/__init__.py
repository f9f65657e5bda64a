"""Chat templates shipped with tunelab, for models whose tokenizer has none."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tunelab.errors import TunelabError

BUILTIN_TEMPLATES = ("chatml", "llama3", "mistral")


def builtin_template(name: str) -> str:
    """The Jinja source of a built-in template."""
    return (
        resources.files("tunelab.templates").joinpath(f"{name}.jinja").read_text(encoding="utf-8")
    )


def resolve_template(setting: str, tokenizer) -> str:
    """The Jinja source model.template names: auto, a built-in name, or a .jinja file."""
    if setting == "auto":
        if not tokenizer.chat_template:
            raise TunelabError(
                "the model's tokenizer has no chat template; set model.template to one of "
                f"{', '.join(BUILTIN_TEMPLATES)} or to a .jinja file."
            )
        return tokenizer.chat_template
    if setting in BUILTIN_TEMPLATES:
        return builtin_template(setting)
    path = Path(setting).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise TunelabError(
        f"model.template `{setting}` is neither auto, a built-in template "
        f"({', '.join(BUILTIN_TEMPLATES)}), nor an existing .jinja file."
    )
