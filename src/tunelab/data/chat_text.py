"""A chat template's text for a list of messages, as the tokenizer's `apply_chat_template`
writes it (`tokenize=False`), without that call's per-call work.

Preprocessing renders each conversation at least twice (whole, and up to each answer's
generation prompt). Measured on GSM8K train with transformers 5.23, `apply_chat_template`
spent as long re-reading the tokenizer's special tokens and copying every input into plain
data, call after call, as the compiled template took to render. Here that is done once: the
template is compiled by transformers' own compiler (its sandbox, filters and globals, cached),
the special tokens and template arguments are made plain once, and each call hands over the
messages as `apply_chat_template` does (keys set to None dropped, the reasoning under each
name templates read it by). A transformers without those pieces renders through
`apply_chat_template` itself; the tests hold the two equal on every published template.
"""

from __future__ import annotations

from collections.abc import Callable

TextRenderer = Callable[..., str]


def text_renderer(tokenizer, template: str, template_args: dict | None = None) -> TextRenderer:
    """`render(messages, add_generation_prompt=False, tools=None) -> str` for this template."""
    template_args = dict(template_args or {})
    try:
        from jinja2.runtime import new_context
        from transformers.utils.chat_template_utils import (
            _alias_reasoning_fields,
            _compile_jinja_template,
            _plain_template_data,
        )
    except ImportError:
        return library_renderer(tokenizer, template, template_args)
    compiled = _compile_jinja_template(template)
    # what apply_chat_template passes every call: special tokens, overridden by the arguments
    fixed = _plain_template_data({**tokenizer.special_tokens_map, **template_args})
    environment, template_globals = compiled.environment, dict(compiled.globals)

    def render(
        messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None
    ) -> str:
        chat = [{k: v for k, v in m.items() if v is not None} for m in messages]
        values = {
            **fixed,
            "messages": _alias_reasoning_fields(chat),
            "tools": _plain_template_data(tools) if tools else None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        # Template.render, given its globals as a plain dict (copying the chained mapping
        # it keeps them in cost as much as the rendering of a short conversation)
        context = new_context(
            environment, compiled.name, compiled.blocks, values, globals=template_globals
        )
        try:
            return environment.concat(compiled.root_render_func(context))
        except Exception:
            environment.handle_exception()  # re-raises, as Template.render does

    return render


def library_renderer(tokenizer, template: str, template_args: dict | None = None) -> TextRenderer:
    """The same renderer through transformers' `apply_chat_template`, call by call."""
    template_args = dict(template_args or {})

    def render(
        messages: list[dict], add_generation_prompt: bool = False, tools: list | None = None
    ) -> str:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tools=tools or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **template_args,
        )

    return render
