"""Florence-2 grounding and SAM2 segmentation on their tiny presets, and the mask helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polyvivid.data.grounding import MIN_GROUNDING_SCORE, Grounder, tiny_florence2
from polyvivid.data.segmentation import Segmenter, cut_out, largest_component
from polyvivid.samples import draw_subject


def sharp_grounder() -> Grounder:
    """The tiny random Florence-2 with its matrices scaled up: at the default initialisation every
    output is nearly uniform, so the caption's effect on it is invisible; scaled, it shows."""
    model, processor, tokenizer = tiny_florence2()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(30)
    return Grounder(model, processor, tokenizer)


def well_formed(box, w, h):
    return 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h


def test_a_found_phrase_gets_a_well_formed_box_and_its_scores():
    grounder = Grounder.load(preset="tiny")
    assert grounder.min_score == MIN_GROUNDING_SCORE
    image = draw_subject("man", 96).resize((120, 80))
    grounder.min_score = 0.0
    (g,) = grounder.ground(image, ["man"], "a man plays the guitar")
    assert g.found and g.phrase == "man" and 0 < g.score < 1
    assert well_formed(g.box, 120, 80) and g.box_logprob <= 0
    assert grounder.ground(image, ["man"], "a man plays the guitar") == [g]  # deterministic
    with pytest.raises(TypeError, match="list of phrases"):
        grounder.ground(image, "man")


def test_a_phrase_below_the_score_threshold_is_not_found_and_gets_no_box():
    grounder = Grounder.load(preset="tiny")
    image = draw_subject("dog", 64)
    grounder.min_score = 0.0
    (found,) = grounder.ground(image, ["dog"], "a dog runs")
    grounder.min_score = found.score + 1e-4
    (absent,) = grounder.ground(image, ["dog"], "a dog runs")
    assert not absent.found and absent.score == pytest.approx(found.score)
    assert absent.box is None and absent.box_logprob is None  # never a forced box


def test_the_prompt_is_florence2s_phrase_grounding_prompt_with_the_caption():
    grounder = Grounder.load(preset="tiny")
    tokenizer = grounder.tokenizer
    ids = grounder.prompt_ids("a man in red and a woman")
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[1:-1]) == "Locate the phrases in the caption: a man in red and a woman"
    prefix = grounder.answer_prefix("a man in red")
    assert tokenizer.decode(prefix[2:]) == "a man in red"
    # ground() encodes exactly what Florence2's own forward does with <image> tokens before the prompt
    model, image = grounder.model, draw_subject("man", 64)
    pixels = grounder.image_processor([image], return_tensors="pt").pixel_values
    n_image = model.get_image_features(pixel_values=pixels).pooler_output.shape[1]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[model.config.image_token_id] * n_image + ids]), pixel_values=pixels,
                       decoder_input_ids=torch.tensor([prefix])).logits[0, -1]
    expected = float(logits.softmax(-1)[grounder.loc_ids].sum())
    assert grounder.ground(image, ["a man in red"], "a man in red and a woman")[0].score == pytest.approx(expected)


def test_the_caption_decides_which_phrase_is_found():
    grounder = sharp_grounder()
    image = draw_subject("man", 96).resize((120, 80))
    captions = ("a man plays a guitar", "a woman and a man")
    a, b = (grounder.ground(image, ["man"], caption)[0] for caption in captions)
    assert abs(a.score - b.score) > 0.01 and a.box != b.box  # same image and phrase, other caption
    grounder.min_score = (a.score + b.score) / 2  # between the two: one caption finds "man", one does not
    results = [grounder.ground(image, ["man"], caption)[0] for caption in captions]
    assert [g.found for g in results] == [a.score > b.score, b.score > a.score]
    found = next(g for g in results if g.found)
    assert well_formed(found.box, 120, 80)


def test_several_phrases_share_one_encoding_and_keep_their_order():
    grounder = sharp_grounder()
    grounder.min_score = 0.0
    image = draw_subject("guitar", 64)
    both = grounder.ground(image, ["a man", "a guitar"], "a man plays a guitar")
    assert [g.phrase for g in both] == ["a man", "a guitar"]
    assert both[1] == grounder.ground(image, ["a guitar"], "a man plays a guitar")[0]
    with pytest.raises(ValueError, match="empty phrase"):
        grounder.ground(image, [" "], "a man")


def test_grounding_loads_a_saved_directory_without_a_processor_file(tmp_path):
    model, processor, tokenizer = tiny_florence2()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    image = draw_subject("dog", 64)
    loaded = Grounder.load(uri=str(tmp_path), min_score=0.0).ground(image, ["dog"], "a dog")
    assert loaded == Grounder(model, processor, tokenizer, min_score=0.0).ground(image, ["dog"], "a dog")


def test_sam2_masks_stay_in_the_box():
    segmenter = Segmenter.load(preset="tiny")
    image = draw_subject("guitar", 96)
    mask = segmenter.segment(image, [10, 20, 70, 90])
    assert mask.shape == (96, 96) and mask.dtype == bool
    assert not mask[:20].any() and not mask[:, 70:].any()


def test_largest_component_keeps_the_biggest_object():
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:2, 0:2] = True  # 4 pixels
    mask[5:9, 5:9] = True  # 16 pixels
    mask[0, 9] = True
    kept = largest_component(mask)
    assert kept.sum() == 16 and kept[5:9, 5:9].all()
    assert not largest_component(np.zeros((3, 3), dtype=bool)).any()


def test_cut_out_puts_the_subject_on_white():
    image = Image.fromarray(np.full((20, 30, 3), 40, dtype=np.uint8))
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 10:20] = True
    out = np.array(cut_out(image, mask, margin=1))
    assert out.shape == (7, 12, 3)
    assert (out[0] == 255).all() and (out[3, 3] == 40).all()
