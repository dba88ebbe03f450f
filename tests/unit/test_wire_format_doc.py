"""docs/wire-format.md is a contract for non-Python producers: it must match the envelope."""

import json
import re
from pathlib import Path

import msgspec

from dromos.message import Message, decode, encode, new_job_id, utcnow

DOC = Path(__file__).parents[2] / "docs" / "wire-format.md"


def _documented_schema() -> dict[str, object]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)
    schemas = [json.loads(b) for b in blocks if '"$schema"' in b]
    assert len(schemas) == 1, "the page must hold exactly one JSON Schema block"
    return schemas[0]


def test_documented_fields_are_the_envelope_fields() -> None:
    schema = _documented_schema()
    assert list(schema["properties"]) == list(Message.__struct_fields__)  # type: ignore[call-overload]


def test_documented_required_fields_match_the_envelope() -> None:
    schema = _documented_schema()
    info = msgspec.inspect.type_info(Message)
    required = [f.name for f in info.fields if f.required]  # type: ignore[attr-defined]
    assert sorted(schema["required"]) == sorted(required)  # type: ignore[arg-type]


def test_example_in_the_doc_decodes() -> None:
    example = re.findall(r"```json\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    message = decode(example)
    assert message.task == "resize"
    assert message.kwargs == {"width": 640}


def test_every_field_is_written_even_at_its_default() -> None:
    data = json.loads(encode(Message(id=new_job_id(), task="t", created_at=utcnow())))
    assert list(data) == list(Message.__struct_fields__)
    assert data["v"] == 1
