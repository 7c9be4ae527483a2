"""The learn-check's weights-free subject measure on constructed frames, its verdict arithmetic, and the
whole recipe at a toy size (it runs end to end; whether it learns is what `make learn-check` shows)."""

from __future__ import annotations

import numpy as np
import pytest

from polyvivid.data.synthetic import BACKGROUNDS, COLORS, render_clip
from polyvivid.experiments.learn_check import (LearnCheckConfig, format_report, reference_chromaticity, run,
                                               subject_similarity, verdict)

RED_STRIPES = {"shape": "circle", "color": "red", "texture": "striped"}
BLUE_DOTS = {"shape": "circle", "color": "blue", "texture": "dotted"}


def clip_of(subject: dict, background: str = "gray") -> np.ndarray:
    return render_clip([subject], background, 32, 5, np.random.default_rng(0))


def test_the_subject_in_its_video_matches_its_reference_and_another_colour_does_not():
    target = reference_chromaticity(RED_STRIPES)
    same = subject_similarity(clip_of(RED_STRIPES), "gray", target)
    other = subject_similarity(clip_of(BLUE_DOTS), "gray", target)
    assert same.similarity > 0.97 and same.right_colour and same.identity > 0.2
    assert other.similarity < same.similarity - 0.2 and not other.right_colour and other.identity < 0
    # a texture's darker half has the same chromaticity: plain and striped red match alike
    plain = subject_similarity(clip_of({**RED_STRIPES, "texture": "plain"}), "gray", target)
    assert plain.similarity == pytest.approx(same.similarity, abs=0.02)
    for background in BACKGROUNDS:
        assert subject_similarity(clip_of(RED_STRIPES, background), background, target).right_colour


def test_the_identity_score_is_zero_on_average_for_a_video_that_ignores_the_subject():
    # one video, scored against each palette colour in turn: what a model that ignores the subject gets
    # over a balanced set of cases, whether it draws a gray blur or a saturated wrong colour
    blob = np.full((5, 32, 32, 3), 128, np.uint8)
    blob[:, 8:24, 8:24] = (60, 62, 64)  # a dark, nearly gray blob: far from the background
    mean_similarity = []
    for frames in (blob, clip_of({"shape": "circle", "color": "blue", "texture": "plain"})):
        scores = [subject_similarity(frames, "gray", reference_chromaticity({**RED_STRIPES, "color": c}))
                  for c in COLORS]
        assert all(s.similarity > 0 for s in scores)  # the subject region is found
        assert np.mean([s.identity for s in scores]) == pytest.approx(0.0, abs=0.01)
        mean_similarity.append(np.mean([s.similarity for s in scores]))
    # while similarity, averaged alike, prefers the gray blob to the saturated colour
    assert mean_similarity[0] > mean_similarity[1]


def test_an_empty_video_scores_zero():
    frames = np.zeros((5, 32, 32, 3), dtype=np.uint8) + np.array(BACKGROUNDS["gray"], dtype=np.uint8)
    assert subject_similarity(frames, "gray", reference_chromaticity(RED_STRIPES)) == (0.0, 0.0, False)


def test_the_verdict_needs_a_difference_beyond_the_noise():
    cfg = LearnCheckConfig(training_seeds=(0, 1))
    rng = np.random.default_rng(0)
    full = 0.3 + rng.normal(0, 0.01, 24)

    def per_case(identity):  # [cases, 3]: similarity, identity, right colour; the checks read identity
        return np.stack([np.full(24, 0.8), identity, np.ones(24)], axis=1)

    scores = {"full (seed 0)": per_case(full), "full (seed 1)": per_case(full - 0.01),
              "no_injection": per_case(full - 0.2 + rng.normal(0, 0.01, 24)),
              "wrong subject": per_case(full - 0.005 + rng.normal(0, 0.05, 24))}
    report = verdict(cfg, scores, {}, 0.0, 1.0)
    assert report["checks"]["no_injection"]["passed"]
    assert report["checks"]["no_injection"]["difference"] == pytest.approx(0.2, abs=0.01)
    assert not report["checks"]["wrong subject"]["passed"]  # within noise
    assert report["checks"]["wrong subject"]["margin"] >= 2 * 0.01 - 1e-9  # the seed gap sets a floor
    assert not report["passed"] and "FAILED" in format_report(report)


@pytest.mark.parametrize("argv, message", [(["--cases", "1"], "--cases: must be at least 2, got 1"),
                                           (["--latent-channels", "0"], "--latent-channels: must be at least 1"),
                                           (["--steps", "many"], "--steps: not an integer: 'many'")])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path):
    from polyvivid.experiments.learn_check import main

    with pytest.raises(SystemExit) as exited:
        main(argv + ["--out", str(tmp_path / "report.json")])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err and not (tmp_path / "report.json").exists()


@pytest.mark.parametrize("latent_channels", [16, 4])
def test_the_recipe_runs_end_to_end_at_a_toy_size(tmp_path, latent_channels):
    cfg = LearnCheckConfig(train_clips=8, vae_steps=4, base_steps=6, steps=6, cases=3, generation_steps=2,
                           generation_seeds=(0,), training_seeds=(0, 1), latent_channels=latent_channels)
    report = run(cfg, log=lambda _: None, videos_dir=tmp_path, keep_dir=tmp_path / "keep")
    names = [r["condition"] for r in report["rows"]]
    assert names == ["full (seed 0)", "full (seed 1)", "no_injection", "token_concat", "wrong subject", "caption only",
                     "step cache"]
    assert report["step_cache"]["steps"] == 3 * 2 and 0 <= report["step_cache"]["steps_skipped"] <= 3  # 2 steps a case
    assert set(report["checks"]) == {"no_injection", "wrong subject"}
    assert all(0.0 <= r["similarity"] <= 1.0 and -1.0 <= r["identity"] <= 1.0 for r in report["rows"])
    assert "run-to-run" in format_report(report)
    # every condition's videos and the VAE round trip, [cases, generation seeds, F, H, W, 3], to look at
    saved = {p.stem: np.load(p) for p in tmp_path.glob("*.npy")}
    assert set(saved) == {"full_seed_0", "full_seed_1", "no_injection", "token_concat", "wrong_subject",
                          "caption_only", "step_cache", "real_clips_vae"}
    assert saved["no_injection"].shape == (3, 1, cfg.frames, cfg.size, cfg.size, 3)
    assert saved["no_injection"].dtype == np.uint8
    # and one picture of them: a header row and a row per case; reference, real clip, the 8 videos' columns
    from PIL import Image

    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size == ((2 + 8) * (cfg.size * 3 + 2), (1 + 3) * (cfg.size * 3 + 2))
    cell = cfg.size * 3 + 2
    no_injection_frame = np.asarray(sheet)[cell * 2 + 1:cell * 3 - 1, cell * 5 + 1:cell * 6 - 1]  # case 1, column 5
    assert (no_injection_frame[::3, ::3] == saved["no_injection"][1, 0, cfg.frames // 2]).all()
    # what it trained is kept: the base in the diffusers layout, each model a whole loadable checkpoint
    from diffusers import HunyuanVideoTransformer3DModel

    from polyvivid.model.pipeline import PolyVividPipeline, load_pipeline

    assert HunyuanVideoTransformer3DModel.from_pretrained(tmp_path / "keep" / "base").config.num_layers == 2
    kept = load_pipeline(str(tmp_path / "keep" / "no_injection"))
    assert kept.transformer.config.injection == "none"
    assert kept.vae.config.latent_channels == kept.transformer.config.in_channels == latent_channels
    untrained = PolyVividPipeline.from_preset("tiny").vae.config.scaling_factor
    assert kept.vae.config.scaling_factor != untrained  # the trained VAE, with its measured latent scale
    # what the step cache does to identity, on the kept full model: the same held-out cases, with and without
    from polyvivid.experiments.learn_check import step_cache_sweep

    sweep = step_cache_sweep(tmp_path / "keep" / "full_seed_0", cfg, (1e-9, 1.0), log=lambda _: None)
    assert sweep["cases"] == 3 and [r["threshold"] for r in sweep["thresholds"]] == [1e-9, 1.0]
    never, always = sweep["thresholds"]
    assert never["steps_skipped"] == 0 and never["identity_change"] == 0  # nothing skipped: the same videos
    assert always["steps_skipped"] == 0.5  # every step after the first of each 2-step generation
    no_cache = next(r["identity"] for r in report["rows"] if r["condition"] == "full (seed 0)")
    assert sweep["identity_no_cache"] == pytest.approx(no_cache, abs=1e-4)  # the run's own cases and scores
