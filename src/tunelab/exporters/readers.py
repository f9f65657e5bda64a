"""Exports read back the way their users run them, for the parity gate: each reader gives a
probe's prompt tokens (from the artifact's own tokenizer and chat template), its stop tokens,
and its logits over a prompt and answer.

- an HF folder: transformers, as `tunelab chat` or any transformers user loads it;
- a GGUF file: llama.cpp itself when llama-cpp-python is installed (its tokenizer, the
  template in the file's metadata, its own kernels), else transformers' GGUF reader for the
  architectures it reads back; otherwise only the metadata (template, stop ids) is checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunelab.data.render import ConversationRenderer
from tunelab.errors import TunelabError
from tunelab.exporters.parity import Probe, model_logits, prompt_ids


class FolderReader:
    """An HF model folder through transformers."""

    def __init__(self, folder: Path):
        from tunelab.inference.chat_model import open_chat_model

        self.chat = open_chat_model(folder)
        self.name = "transformers"
        self.context = None

    def prompt_ids(self, probe: Probe) -> list[int]:
        return prompt_ids(self.chat, probe)

    def stop_ids(self) -> list[int]:
        return self.chat.stop_token_ids()

    def declared_stop_ids(self) -> list[int]:
        return self.chat.stop_token_ids()

    def logits(self, prompt: list[int], answer: list[int]) -> np.ndarray:
        return model_logits(self.chat.model, prompt, answer)


class LlamaCppReader:
    """A GGUF file through llama.cpp: its tokenizer, the file's template, its kernels."""

    def __init__(self, file: Path, tokenizer, system: str | None):
        import llama_cpp

        self.context = min(declared_context(file), PROBE_CONTEXT)
        self.llm = llama_cpp.Llama(
            str(file), n_ctx=self.context, logits_all=True, verbose=False, n_threads=2, seed=0
        )  # logits for every position of the context are held: the probes' length is enough
        self.metadata = self.llm.metadata
        template = self.metadata.get("tokenizer.chat_template", "")
        self.renderer = ConversationRenderer(tokenizer, template)
        self.system = system
        self.name = f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"

    def prompt_ids(self, probe: Probe) -> list[int]:
        renderer = self.renderer
        if probe.template_args:
            renderer = ConversationRenderer(
                renderer.tokenizer, renderer.template, template_args=probe.template_args
            )
        text = renderer.prompt_text(_with_system(probe.messages, self.system), probe.tools)
        add_bos = self.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def stop_ids(self) -> list[int]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        return [i for i in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]

    def declared_stop_ids(self) -> list[int]:
        keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
        return [int(self.metadata[key]) for key in keys if key in self.metadata]

    def logits(self, prompt: list[int], answer: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(prompt + answer)
        scores = np.array(self.llm.scores[: len(prompt) + len(answer)], dtype=np.float32)
        return scores[len(prompt) - 1 : len(prompt) - 1 + max(len(answer), 1)]


class TransformersGgufReader(FolderReader):
    """A GGUF file read back by transformers (`gguf_file=`), for architectures it reads."""

    def __init__(self, file: Path, system: str | None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunelab.inference.chat_model import ChatModel

        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        model = AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, dtype="float32"
        ).eval()
        renderer = ConversationRenderer(tokenizer, tokenizer.chat_template or "")
        self.chat = ChatModel(model, tokenizer, renderer, model.device, str(file), system)
        self.name = "transformers (gguf_file)"
        self.context = None


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}, *messages]
    return messages


def gguf_reader(file: Path, architecture: str, tokenizer, system: str | None):
    """The best reader of a GGUF file here, or None where nothing can run it."""
    if llama_cpp_installed():
        failure = llama_cpp_failure(file)
        if failure:
            raise TunelabError(
                f"llama.cpp cannot run the GGUF file it was written for ({failure}); the export "
                "was not kept (--no-verify keeps it unchecked)."
            )
        return LlamaCppReader(file, tokenizer, system)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if architecture in GGUF_SUPPORTED_ARCHITECTURES:
        return TransformersGgufReader(file, system)
    return None


def llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


PROBE_CONTEXT = 1024


def declared_context(file: Path) -> int:
    """The context length a GGUF file declares (`{arch}.context_length`)."""
    from tunelab.exporters.gguf_metadata import gguf_metadata

    fields = gguf_metadata(file)
    found = fields.get(f"{fields.get('general.architecture')}.context_length")
    return int(found) if found is not None else PROBE_CONTEXT


SMOKE = (
    "import sys, llama_cpp\n"
    "llm = llama_cpp.Llama(sys.argv[1], n_ctx=int(sys.argv[2]), verbose=False)\n"
    "llm.eval([llm.token_bos() if llm.token_bos() >= 0 else 0])\n"
)


def llama_cpp_failure(file: Path) -> str | None:
    """Why llama.cpp cannot load and run `file` (None when it can), found in a child process:
    llama.cpp aborts the whole process on some files, which must not take tunelab with it."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", SMOKE, str(file), str(min(declared_context(file), PROBE_CONTEXT))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit {done.returncode}")[:300]
