"""Structured captions: parsing an MLLM's answer, caption files beside videos, the tiny captioner."""

from __future__ import annotations

from polyvivid.data.captioning import Captioner, StructuredCaption, parse_structured, sidecar_caption
from polyvivid.samples import draw_subject


def test_parses_the_first_json_object_of_an_answer():
    answer = 'Sure! {"caption": "A man plays a red guitar.", "short_caption": "Man, guitar.", ' \
             '"subjects": ["man", "red guitar", ""]} Anything else?'
    parsed = parse_structured(answer)
    assert parsed == StructuredCaption("A man plays a red guitar.", "Man, guitar.", ["man", "red guitar"])
    assert parsed.problems() == []
    assert parse_structured("no json here {broken") is None
    assert parse_structured('{"subjects": ["x"]}') is None  # no caption


def test_problems_say_why_a_caption_cannot_be_used():
    assert StructuredCaption("A man.", subjects=[]).problems() == ["no subject phrases"]
    assert StructuredCaption("A woman sings.", subjects=["man"]).problems() == [
        "subject phrases not in the caption: ['man']"]
    assert "repeated subject phrases" in StructuredCaption("A man and a man.", subjects=["man", "Man"]).problems()


def test_caption_files_beside_a_video():
    data = b'{"caption": "A dog chases a ball.", "subjects": ["dog", "ball"]}'
    assert sidecar_caption({"json": data}).subjects == ["dog", "ball"]
    assert sidecar_caption({"txt": b"A dog runs.\n"}) == StructuredCaption("A dog runs.")
    assert sidecar_caption({}) is None


def test_tiny_captioner_runs_end_to_end():
    captioner = Captioner.load(preset="tiny", max_new_tokens=8)
    parsed, raw = captioner.caption([draw_subject("man"), draw_subject("guitar")])
    assert isinstance(raw, str) and parsed is None  # random weights answer noise, never JSON
