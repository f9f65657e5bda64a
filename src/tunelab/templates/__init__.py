"""Chat templates shipped with tunelab, for models whose tokenizer has none."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tunelab.errors import TunelabError

BUILTIN_TEMPLATES = ("chatml", "llama3", "mistral", "qwen3", "deepseek-r1")


def builtin_template(name: str) -> str:
    """The Jinja source of a built-in template."""
    return (
        resources.files("tunelab.templates").joinpath(f"{name}.jinja").read_text(encoding="utf-8")
    )


def template_file(setting: str, base_dir: Path | None = None) -> Path | None:
    """The .jinja file model.template names (as given, else beside the recipe), if it is one."""
    if setting == "auto" or setting in BUILTIN_TEMPLATES:
        return None
    path = Path(setting).expanduser()
    candidates = [path] if path.is_absolute() or base_dir is None else [path, base_dir / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TunelabError(
        f"model.template `{setting}` is neither auto, a built-in template "
        f"({', '.join(BUILTIN_TEMPLATES)}), nor an existing .jinja file."
    )


def read_template_file(path: Path) -> str:
    """A template file's source, compiled once so a syntax error names its file and line."""
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TunelabError(f"{path}: the chat template is not UTF-8 text.") from None
    check_compiles(source, str(path))
    return source


def check_compiles(source: str, origin: str) -> None:
    """Compile a chat template as transformers will when it renders it."""
    import jinja2

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template as compile_
    except ImportError:  # another transformers layout: a plain sandboxed compile
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
        compile_ = env.from_string
    try:
        compile_(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TunelabError(
            f"{origin}:{exc.lineno}: the chat template does not compile ({exc.message}); "
            "fix that line."
        ) from None


def resolve_template(setting: str, tokenizer, base_dir: Path | None = None) -> str:
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
    return read_template_file(template_file(setting, base_dir))
