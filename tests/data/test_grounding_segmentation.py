"""Florence-2 grounding and SAM2 segmentation on their tiny presets, and the mask helpers."""

from __future__ import annotations

import numpy as np
from PIL import Image

from polyvivid.data.grounding import Grounder
from polyvivid.data.segmentation import Segmenter, cut_out, largest_component
from polyvivid.samples import draw_subject


def test_grounding_gives_one_well_formed_box_per_phrase():
    grounder = Grounder.load(preset="tiny")
    image = draw_subject("man", 96).resize((120, 80))
    box = grounder.ground(image, "man")
    assert 0 <= box.x1 < box.x2 <= 120 and 0 <= box.y1 < box.y2 <= 80
    assert box.score <= 0
    assert grounder.ground(image, "man") == box  # deterministic


def test_grounding_loads_a_saved_directory_without_a_processor_file(tmp_path):
    from polyvivid.data.grounding import tiny_florence2

    model, processor, tokenizer = tiny_florence2()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    image = draw_subject("dog", 64)
    assert Grounder.load(uri=str(tmp_path)).ground(image, "dog") == Grounder(model, processor, tokenizer).ground(image, "dog")


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
