"""The one ONNX reader (:mod:`desktop.engine.onnx_io`), on the real shipped models.

The model check (graph names, in the window, without ONNX Runtime) and the merge of models
into one session (:mod:`desktop.engine.joint`) read ONNX files through one schema with
protobuf's runtime; they used to be two readers with two copies of the field numbers.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest

from desktop.engine.errors import ModelError
from desktop.engine.onnx_io import check_model_bytes, graph_io_names, parse_model
from tests.conftest import REPO

SHIPPED = REPO / "assets" / "models"


@pytest.mark.parametrize("model_id", ["modality", "tb", "pneumonia", "agegroup"])
def test_the_schema_reads_what_onnx_runtime_reads(model_id: str):
    data = (SHIPPED / f"{model_id}.onnx").read_bytes()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert graph_io_names(data) == (
        [i.name for i in session.get_inputs()],
        [o.name for o in session.get_outputs()],
    )
    model = parse_model(data)  # what the merge reads, from the same schema
    assert len(model.graph.node) > 10 and model.graph.initializer[0].raw_data


def test_a_name_that_is_not_utf8_is_refused_in_words():
    """protobuf hands such a proto2 string back as bytes; the check still names it as text
    (mixed bytes and text could not even be sorted for the message)."""
    data = (SHIPPED / "tb.onnx").read_bytes()
    garbled = b"\xff" * len(b"activation_map")  # same length: every field length stays right
    data = data.replace(b"activation_map", garbled)
    inputs, outputs = graph_io_names(data)
    assert inputs == ["image"] and sorted(outputs) == ["probabilities", "\ufffd" * 14]
    with pytest.raises(ModelError, match=r"model lacks outputs \['activation_map'\]"):
        check_model_bytes(data, "image", ["probabilities", "activation_map"])
