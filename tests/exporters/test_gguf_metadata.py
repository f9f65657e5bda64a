"""A GGUF file's metadata read without its arrays gives what the gguf package reads."""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.errors import TunelabError
from tunelab.exporters.gguf_metadata import gguf_metadata


def test_scalars_and_strings_are_the_gguf_packages_and_arrays_are_stepped_over(tmp_path):
    import gguf

    file = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(file), "llama")
    writer.add_token_list([f"tok{i}" for i in range(5000)] + ["ünï", ""])
    writer.add_string("tokenizer.chat_template", "{{ messages }} ✓")
    writer.add_uint32("llama.context_length", 4096)
    writer.add_array("some.ints", list(range(300)))
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_int64("some.big", -(2**40))
    writer.add_tensor("w", np.ones((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    fields = gguf.GGUFReader(str(file)).fields.values()
    expected = {
        f.name: f.contents()
        for f in fields
        if not f.name.startswith("GGUF.") and f.types[0] != gguf.GGUFValueType.ARRAY
    }
    assert gguf_metadata(file) == expected
    assert expected["tokenizer.chat_template"] == "{{ messages }} ✓"
    assert expected["some.big"] == -(2**40) and expected["llama.context_length"] == 4096


def test_a_file_that_is_not_gguf_is_one_sentence(tmp_path):
    other = tmp_path / "notes.gguf"
    other.write_bytes(b"my own notes")
    with pytest.raises(TunelabError, match="is not a GGUF file"):
        gguf_metadata(other)
