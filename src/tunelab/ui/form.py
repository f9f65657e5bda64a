"""The recipe as a flat form, made from the recipe's own typed sections: one field per setting,
with its description, default and choices, so the form cannot drift from the recipe.

Pure data: the web page draws these fields, and `values_of` / `recipe_of` turn a recipe into
form values and back (only what differs from a default is written back out).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tunelab.recipe import EvaluateConfig, Recipe

NONE_CHOICE = "(none)"
TRISTATE = ("true", "false")
# the recipe's sections, in the order the form shows them; evaluate is optional as a whole
SECTIONS = ("model", "data", "method", "train", "preference", "grpo", "evaluate")
TOP_LEVEL = ("output", "stages", "sweep")


@dataclass(frozen=True)
class FormField:
    """One recipe setting: `key` is its dotted name (train.lr), `kind` how it is edited:
    choice, switch, tristate (true, false or unset), integer, number, text, or yaml (lists,
    mappings, mixed types)."""

    key: str
    kind: str
    description: str
    default: Any
    choices: tuple = ()
    optional: bool = False  # None is allowed (a choice then offers NONE_CHOICE)
    required: bool = False

    @property
    def label(self) -> str:
        return self.key.split(".", 1)[-1]


def form_fields() -> list[FormField]:
    """Every setting of a recipe, section by section."""
    fields: list[FormField] = []
    for section in SECTIONS:
        model = _section_model(section)
        fields += [_field(f"{section}.{name}", info) for name, info in model.model_fields.items()]
    fields += [_field(name, Recipe.model_fields[name]) for name in TOP_LEVEL]
    return fields


def _section_model(section: str) -> type[BaseModel]:
    return EvaluateConfig if section == "evaluate" else Recipe.model_fields[section].annotation


def _field(key: str, info) -> FormField:
    annotation, optional = _strip_none(info.annotation)
    if info.default_factory is not None:
        default = info.default_factory()
    else:
        default = None if info.default is PydanticUndefined else info.default
    if isinstance(default, BaseModel):
        default = default.model_dump(mode="json")
    kind, choices = _kind(annotation)
    listed = (info.json_schema_extra or {}).get("choices")
    if listed is not None:  # names a registry extends (the objectives)
        kind, choices = "choice", tuple(listed)
    if kind == "switch" and optional:  # yes, no, or not set (then the run decides)
        kind, choices = "tristate", TRISTATE
    return FormField(
        key=key,
        kind=kind,
        description=info.description or "",
        default=default,
        choices=choices,
        optional=optional,
        required=info.is_required(),
    )


def _strip_none(annotation) -> tuple[Any, bool]:
    """(the annotation without None, whether None was allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def _kind(annotation) -> tuple[str, tuple]:
    if typing.get_origin(annotation) is Literal:
        return "choice", typing.get_args(annotation)
    simple = {bool: "switch", int: "integer", float: "number", str: "text"}
    if annotation in simple:
        return simple[annotation], ()
    return "yaml", ()


def values_of(recipe: Recipe) -> dict[str, Any]:
    """The form's value for every field of `recipe`."""
    dumped = recipe.model_dump(mode="json")
    values = {}
    for field in form_fields():
        section, _, name = field.key.partition(".")
        if name:
            holder = dumped.get(section) or {}
            value = holder.get(name, field.default)
        else:
            value = dumped[section]
        values[field.key] = shown(field, value)
    return values


def shown(field: FormField, value: Any) -> Any:
    """A recipe value as its field shows it."""
    if field.kind == "yaml":
        empty = value is None or (value in ([], {}) and value == field.default)
        return "" if empty else yaml_text(value)
    if field.kind == "choice":
        return NONE_CHOICE if value is None else value
    if field.kind == "tristate":
        return NONE_CHOICE if value is None else TRISTATE[0 if value else 1]
    if field.kind == "text" or (field.optional and field.kind in ("integer", "number")):
        return "" if value is None else str(value)
    return value


def yaml_text(value: Any) -> str:
    """A value as a YAML field shows it (short lists and mappings on one line)."""
    text = yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=None)
    return text.removesuffix("...\n").strip()  # a lone scalar's end-of-document marker


class FormError(ValueError):
    """A field's text that is not a value of its kind (its key and what is wrong)."""


def read_back(field: FormField, value: Any) -> Any:
    """A field's value as the recipe takes it (None for an empty optional field)."""
    if field.kind == "yaml":
        text = (value or "").strip()
        if not text:
            return (
                None
                if field.optional or not isinstance(field.default, list | dict)
                else field.default
            )
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise FormError(f"`{field.key}` is not valid YAML{where}: {exc.problem}") from None
    if field.kind == "choice":
        return None if value in (None, NONE_CHOICE) else value
    if field.kind == "tristate":
        return None if value in (None, NONE_CHOICE) else value == TRISTATE[0]
    if field.kind == "text":
        return None if value in (None, "") and field.optional else value
    if field.kind in ("integer", "number"):
        return _number(field, value)
    return value


def _number(field: FormField, value: Any) -> Any:
    """A number field's value; an optional one is shown as text, where empty means None."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None if field.optional else field.default
        try:
            value = float(text)
        except ValueError:
            raise FormError(f"`{field.key}` takes a number, not {text!r}") from None
    if field.kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def recipe_of(values: dict[str, Any]) -> dict:
    """The recipe (as YAML would hold it) that form `values` say: settings left at their
    defaults are left out, and the evaluate section only when one of its settings is given."""
    raw: dict[str, Any] = {}
    for field in form_fields():
        if field.key not in values:
            continue
        value = read_back(field, values[field.key])
        if value == field.default and not field.required:
            continue
        section, _, name = field.key.partition(".")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return raw


def recipe_yaml(values: dict[str, Any]) -> str:
    return yaml.safe_dump(recipe_of(values), sort_keys=False, allow_unicode=True)
