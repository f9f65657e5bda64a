"""An Ollama Modelfile for an exported GGUF: FROM, a TEMPLATE in Ollama's Go-template language
translated from the run's chat template, SYSTEM and the stop tokens.

The translation is read off the Jinja template's own output rather than its source: a
conversation of marker texts is rendered, and the text around each marker gives the pieces
(role headers, closing tokens, a system preamble such as Llama-3.1's dates, a default system
prompt, where a Mistral template folds the system prompt). Three layouts are known: ChatML
(`<|im_start|>`), Llama-3 (`<|start_header_id|>`) and Mistral (`[INST]`). The Go template is
written on one line without whitespace trimming, so that it produces exactly those pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunelab.errors import TunelabError

Render = Callable[[list[dict]], str]  # messages -> the prompt text, generation prompt included

SYS, USR1, AST1, USR2 = "SYSMARK17", "USRMARK23", "ASTMARK31", "USRMARK47"
HEADERS = {  # layout: (open, separator after the role, close)
    "chatml": ("<|im_start|>", "\n", "<|im_end|>\n"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>"),
}


@dataclass
class OllamaTemplate:
    layout: str
    template: str
    stops: list[str]


def translate(render: Render, bos: str | None, adds_bos: bool = True) -> OllamaTemplate:
    """The Go template that writes what `render` writes. A leading BOS is left to the
    runtime when its tokenizer adds one itself (`adds_bos`), else written by the template."""
    conversation = [
        {"role": "system", "content": SYS},
        {"role": "user", "content": USR1},
        {"role": "assistant", "content": AST1},
        {"role": "user", "content": USR2},
    ]
    try:
        full, bare = render(conversation), render(conversation[1:2])
    except Exception as exc:  # the template refuses a plain conversation (e.g. a system turn)
        raise _unlike(f"it refuses a system, user, assistant, user conversation: {exc}") from exc
    lead = ""
    if bos and full.startswith(bos) and bare.startswith(bos):
        full, bare = full[len(bos) :], bare[len(bos) :]
        lead = "" if adds_bos else _literal(bos)
    for layout, (opener, _, _) in HEADERS.items():
        if opener in full:
            return _with_lead(lead, _headers(layout, full, bare))
    if "[INST]" in full:
        return _with_lead(lead, _mistral(full, bare))
    raise TunelabError(
        "no Ollama TEMPLATE is known for this chat template (ChatML, Llama-3 and Mistral "
        "layouts are); the GGUF file carries the Jinja template in its metadata."
    )


def _with_lead(lead: str, translated: OllamaTemplate) -> OllamaTemplate:
    translated.template = lead + translated.template
    return translated


def _split(text: str, markers: list[str]) -> list[str]:
    """The pieces of `text` between the markers, which must appear in order."""
    pieces, rest = [], text
    for marker in markers:
        before, found, rest = rest.partition(marker)
        if not found:
            raise _unlike("its output is missing a message")
        pieces.append(before)
    return [*pieces, rest]


def _unlike(why: str) -> TunelabError:
    return TunelabError(
        f"the chat template does not follow a layout Ollama's TEMPLATE can be written for ({why}); "
        "the GGUF file carries the Jinja template in its metadata."
    )


def _headers(layout: str, full: str, bare: str) -> OllamaTemplate:
    opener, separator, close = HEADERS[layout]

    def header(role: str) -> str:
        return f"{opener}{role}{separator}"

    start, after_sys, after_usr1, after_ast1, tail = _split(full, [SYS, USR1, AST1, USR2])
    if not start.startswith(header("system")):
        raise _unlike("the system prompt is not a turn of its own")
    preamble = start[len(header("system")) :]
    for piece, role in [(after_sys, "user"), (after_usr1, "assistant"), (after_ast1, "user")]:
        if piece != close + header(role):
            raise _unlike(f"unexpected text {piece!r} between turns")
    if not tail.startswith(close + header("assistant")):
        raise _unlike(f"unexpected generation prompt {tail!r}")
    opening = tail[len(close + header("assistant")) :]  # e.g. an empty think block
    default = ""
    if not bare.startswith(header("user")):
        head, found, _ = bare.partition(close + header("user") + USR1)
        if not found or not head.startswith(header("system") + preamble):
            raise _unlike("unexpected text before the first user turn")
        default = head[len(header("system") + preamble) :]
        default = (
            "{{ if not $system }}"
            + _literal(header("system") + preamble + default + close)
            + "{{ end }}"
        )
    template = (
        '{{ $system := false }}{{ range .Messages }}{{ if eq .Role "system" }}'
        "{{ $system = true }}{{ end }}{{ end }}"
        + default
        + "{{ range .Messages }}"
        + _literal(opener)
        + "{{ .Role }}"
        + _literal(separator)
        + ('{{ if eq .Role "system" }}' + _literal(preamble) + "{{ end }}" if preamble else "")
        + "{{ .Content }}"
        + _literal(close)
        + "{{ end }}"
        + _literal(header("assistant") + opening)
    )
    return OllamaTemplate(layout, template, [close.strip()])


def _mistral(full: str, bare: str) -> OllamaTemplate:
    start, after_sys, after_usr1, after_ast1, tail = _split(full, [SYS, USR1, AST1, USR2])
    user_open = start
    if not user_open or not after_ast1.endswith(user_open):
        raise _unlike("the system prompt is not folded into the first user turn")
    user_close = tail
    if not after_usr1.startswith(user_close):
        raise _unlike("the user turns do not end alike")
    assistant_open = after_usr1[len(user_close) :]
    assistant_close = after_ast1[: len(after_ast1) - len(user_open)]
    if bare != user_open + USR1 + user_close:
        raise _unlike("a conversation without a system prompt renders differently")
    template = (
        '{{ $system := "" }}{{ range .Messages }}{{ if eq .Role "system" }}'
        "{{ $system = .Content }}{{ end }}{{ end }}{{ $first := true }}"
        '{{ range .Messages }}{{ if eq .Role "user" }}'
        + _literal(user_open)
        + "{{ if and $first $system }}{{ $system }}"
        + _literal(after_sys)
        + "{{ end }}{{ .Content }}"
        + _literal(user_close)
        + '{{ $first = false }}{{ else if eq .Role "assistant" }}'
        + _literal(assistant_open)
        + "{{ .Content }}"
        + _literal(assistant_close)
        + "{{ end }}{{ end }}"
    )
    return OllamaTemplate("mistral", template, [])  # its stop is the model's own EOS


def _literal(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise _unlike("its text holds template braces")
    return text


def modelfile(
    gguf_name: str, template: OllamaTemplate, system: str | None, stops: list[str]
) -> str:
    """The Modelfile text: FROM, TEMPLATE, SYSTEM (the run's default), PARAMETER stop lines."""
    for text in [template.template, system or ""]:
        if '"""' in text:
            raise TunelabError(
                'the template or system prompt holds """, which a Modelfile cannot quote.'
            )
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template.template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    for stop in dict.fromkeys([*template.stops, *stops]):
        if stop:
            lines.append(f"PARAMETER stop {_quoted(stop)}")
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
