"""Every check a request passes before it becomes a job (no Ray: the functions the ingress calls)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from polyvivid.api.service import GenerationDefaults, Limits
from polyvivid.serve.schema import RequestRejected, check_request, parse_body

LIMITS = Limits(max_subjects=2, max_frames=17, max_height=64, max_width=64, max_steps=8)
DEFAULTS = GenerationDefaults(num_frames=9, height=32, width=48, steps=4, guidance=5.0)


def image_b64(fmt="PNG", size=(24, 24)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def body(**changes) -> dict:
    b = {"prompt": "A man plays the guitar", "subjects": [{"name": "man", "image": image_b64()},
                                                        {"name": "guitar", "image": image_b64("JPEG")}]}
    b.update(changes)
    return b


def check(b: dict):
    return check_request(parse_body(json.dumps(b).encode()), LIMITS, DEFAULTS, seed=7)


def test_defaults_fill_what_is_left_out_and_images_keep_their_bytes():
    gen = check(body())
    assert (gen.num_frames, gen.height, gen.width, gen.steps, gen.guidance, gen.seed) == (9, 32, 48, 4, 5.0, 7)
    assert [(s.name, s.extension) for s in gen.subjects] == [("man", "png"), ("guitar", "jpg")]
    assert gen.subjects[0].image == base64.b64decode(body()["subjects"][0]["image"])
    gen = check(body(num_frames=17, height=64, width=16, steps=8, guidance=0, seed=3))
    assert (gen.num_frames, gen.height, gen.width, gen.steps, gen.guidance, gen.seed) == (17, 64, 16, 8, 0.0, 3)
    assert gen.step_cache_threshold == 0.0 and gen.settings()["step_cache_threshold"] == 0.0  # the service's default
    assert check(body(step_cache_threshold=0.1)).step_cache_threshold == 0.1
    cached = check_request(parse_body(json.dumps(body()).encode()), LIMITS,
                           DEFAULTS.model_copy(update={"step_cache_threshold": 0.05}), seed=7)
    assert cached.step_cache_threshold == 0.05


BAD = [
    # (what, body changes, status, code, field)
    ("not JSON", None, 400, "invalid_json", None),
    ("unknown field", {"negative": "x"}, 422, "invalid_request", "negative"),
    ("prompt of the wrong type", {"prompt": 3}, 422, "invalid_request", "prompt"),
    ("empty prompt", {"prompt": ""}, 422, "invalid_request", "prompt"),
    ("blank prompt", {"prompt": "   ", "subjects": []}, 422, "invalid_request", "prompt"),
    ("image not base64", {"subjects": [{"name": "man", "image": "%%%"}]}, 422, "invalid_image", "subjects[0].image"),
    ("image not an image", {"subjects": [{"name": "man", "image": base64.b64encode(b"hello").decode()}]},
     422, "invalid_image", "subjects[0].image"),
    ("image a GIF", {"subjects": [{"name": "man", "image": image_b64("GIF")}]}, 422, "invalid_image",
     "subjects[0].image"),
    ("image too many pixels", {"subjects": [{"name": "man", "image": image_b64("PNG", (5000, 4000))}]},
     413, "image_too_large", "subjects[0].image"),
    ("too many subjects", {"prompt": "a man, a dog and a guitar", "subjects": [
        {"name": n, "image": image_b64()} for n in ("man", "dog", "guitar")]}, 422, "too_many_subjects", "subjects"),
    ("subject not in prompt", {"subjects": [{"name": "tiger", "image": image_b64()}]}, 422, "invalid_request",
     "subjects[0].name"),
    ("subject only inside a word", {"prompt": "A woman plays", "subjects": [{"name": "man", "image": image_b64()}]},
     422, "invalid_request", "subjects[0].name"),
    ("subject twice", {"subjects": [{"name": "man", "image": image_b64()}, {"name": "Man", "image": image_b64()}]},
     422, "invalid_request", "subjects[1].name"),
    ("frames over the limit", {"num_frames": 21}, 422, "out_of_limits", "num_frames"),
    ("frames not 4k+1", {"num_frames": 8}, 422, "invalid_request", "num_frames"),
    ("height over the limit", {"height": 80}, 422, "out_of_limits", "height"),
    ("width not a multiple of 16", {"width": 40}, 422, "invalid_request", "width"),
    ("negative size", {"width": -16}, 422, "out_of_limits", "width"),
    ("steps over the limit", {"steps": 9}, 422, "out_of_limits", "steps"),
    ("guidance out of range", {"guidance": 100.0}, 422, "out_of_limits", "guidance"),
    ("negative seed", {"seed": -1}, 422, "invalid_request", "seed"),
    ("frames as a string", {"num_frames": "9"}, 422, "invalid_request", "num_frames"),
    ("step cache threshold over 1", {"step_cache_threshold": 2.0}, 422, "invalid_request", "step_cache_threshold"),
]


@pytest.mark.parametrize("what,changes,status,code,field", BAD, ids=[b[0] for b in BAD])
def test_every_bad_input_is_refused_naming_its_field(what, changes, status, code, field):
    with pytest.raises(RequestRejected) as caught:
        if changes is None:
            check_request(parse_body(b"{not json"), LIMITS, DEFAULTS, seed=0)
        else:
            check(body(**changes))
    e = caught.value
    assert (e.status, e.code, e.field) == (status, code, field), e.message
    assert e.body() == {"error": {"code": code, "message": e.message, "field": field}}
    assert field is None or e.message.startswith(field.split("[")[0]) or field in e.message, e.message


def form(fields: list[tuple[str, str | None, bytes]], boundary: str = "b0und") -> tuple[bytes, str]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'.encode()
                    + (f'; filename="{filename}"'.encode() if filename else b"") + b"\r\n\r\n" + data + b"\r\n"
                    for name, filename, data in fields) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_openai_fields_map_to_ours_and_a_multipart_form_reads_as_the_json_body():
    gen = check(body(size="48x32", seconds=0.5, model="sora-2"))
    assert (gen.width, gen.height, gen.num_frames) == (48, 32, 13)  # 0.5 s at 24 fps -> 12 -> 4k+1 = 13
    for both, field in ((dict(size="48x32", width=48), "size"), (dict(seconds=1.0, num_frames=9), "seconds")):
        with pytest.raises(RequestRejected) as e:
            check(body(**both))
        assert e.value.field == field
    man, guitar = (base64.b64decode(s["image"]) for s in body()["subjects"])
    raw, content_type = form([("prompt", None, b"A man plays the guitar"), ("steps", None, b"8"),
                              ("subjects", None, json.dumps([{"name": "man"}, {"name": "guitar"}]).encode()),
                              ("input_reference", "a.png", man), ("input_reference", "b.jpg", guitar)])
    gen = check_request(parse_body(raw, content_type), LIMITS, DEFAULTS, seed=7)
    assert gen.steps == 8 and [(s.name, s.image) for s in gen.subjects] == [("man", man), ("guitar", guitar)]
    for fields, field in (([("prompt", None, b"x"), ("steps", None, b"many")], "steps"),
                          ([("prompt", None, b"x"), ("subjects", None, b"[{")], "subjects"),
                          ([("prompt", None, b"A man"), ("subjects", None, b'[{"name": "man"}]')], "subjects[0].image"),
                          ([("prompt", None, b"A man"), ("input_reference", "a.png", man)], "input_reference")):
        with pytest.raises(RequestRejected) as e:
            parse_body(*form(fields))
        assert e.value.status == 422 and e.value.field == field
