"""The metrics' maths on constructed inputs, with tiny random-initialised models (no weights here):
identical inputs score 1 (similarities) or 0 (FVD), a shuffled video loses temporal consistency, a
mean shift of the features is exactly the FVD, frames without a face or without the subject are counted
(DINO-sim: the mean over the frames where the subject is found)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyvivid.data.clip_score import ClipScorer, tiny_clip
from polyvivid.eval.clip_metrics import temporal_consistency, text_alignment
from polyvivid.eval.dino import DinoEmbedder, subject_similarity
from polyvivid.eval.face import FaceModels, face_similarity, tiny_face_models
from polyvivid.eval.fvd import ClipVideoFeatures, I3DFeatures, frechet_distance, fvd
from polyvivid.samples import draw_subject

SIZE = 64


@pytest.fixture(scope="module")
def clip():
    return ClipScorer(*tiny_clip())


def moving_video(frames: int = 16, seed: int = 0) -> np.ndarray:
    """A drawn tiger gliding right over a smooth background: neighbouring frames are alike."""
    rng = np.random.default_rng(seed)
    tiger = np.asarray(draw_subject("tiger", 32))
    base = np.linspace(40, 200, SIZE, dtype=np.float32)[None, :, None].repeat(SIZE, 0).repeat(3, 2)
    base += rng.normal(0, 3, base.shape).astype(np.float32)
    video = []
    for t in range(frames):
        frame = base.copy()
        x = 2 * t
        frame[16:48, x:x + 32] = tiger[:, : SIZE - x][:, :32]
        video.append(frame.clip(0, 255).astype(np.uint8))
    return np.stack(video)


def test_a_still_video_is_perfectly_consistent_and_a_shuffled_one_less(clip):
    video = moving_video()
    still = np.repeat(video[:1], 8, axis=0)
    assert temporal_consistency(clip, still) == pytest.approx(1.0, abs=1e-5)
    ordered = temporal_consistency(clip, video)
    shuffled = temporal_consistency(clip, video[np.random.default_rng(1).permutation(len(video))])
    reversed_in_blocks = temporal_consistency(clip, np.concatenate([video[::2], video[1::2]]))
    assert ordered < 1.0
    assert shuffled < ordered and reversed_in_blocks < ordered


def test_text_alignment_is_the_mean_frame_score(clip):
    video = moving_video(6)
    per_frame = [text_alignment(clip, video[i:i + 1], "a tiger runs") for i in range(len(video))]
    assert text_alignment(clip, video, "a tiger runs") == pytest.approx(np.mean(per_frame), abs=1e-5)
    assert all(-1 <= s <= 1 for s in per_frame)
    # a different prompt gives a different score (the text matters)
    assert text_alignment(clip, video, "a guitar on a table") != pytest.approx(per_frame[0], abs=1e-6)


def test_face_similarity_is_one_for_the_same_face_and_counts_faceless_frames():
    models = FaceModels(*tiny_face_models())
    man = draw_subject("man", SIZE)
    frame = np.asarray(man)
    blank = np.full_like(frame, 30)
    score = face_similarity(models, np.stack([frame, blank, frame, blank, blank]), man)
    assert score.similarity == pytest.approx(1.0, abs=1e-5)
    assert (score.frames_with_face, score.frames) == (2, 5)
    none = face_similarity(models, np.stack([blank, blank]), man)
    assert none.similarity is None and none.frames_with_face == 0
    # another person (a different face colour and size) scores lower than the same one
    other = np.asarray(man).copy()
    other[5:30, 20:45] = (200, 170, 140)
    assert face_similarity(models, other[None], man).similarity < 0.9999


def test_face_models_load_from_torchscript_files_and_s3(tmp_path, s3_bucket):
    from polyvivid.storage import open_store

    detector, embedder = tiny_face_models()
    detector.save(str(tmp_path / "detector.pt"))
    embedder.save(str(tmp_path / "embedder.pt"))
    store = open_store(f"{s3_bucket}/face")
    store.upload_file(tmp_path / "detector.pt", "detector.pt")
    store.upload_file(tmp_path / "embedder.pt", "embedder.pt")
    frame = np.asarray(draw_subject("man", SIZE))
    for loaded in (FaceModels.load(str(tmp_path / "detector.pt"), str(tmp_path / "embedder.pt")),
                   FaceModels.load(f"{s3_bucket}/face/detector.pt", f"{s3_bucket}/face/embedder.pt")):
        assert torch.equal(loaded.boxes(frame), FaceModels(detector, embedder).boxes(frame))
        assert face_similarity(loaded, frame[None], draw_subject("man", SIZE)).similarity == pytest.approx(1, abs=1e-5)


def test_a_torch_export_program_loads_too(tmp_path):
    from polyvivid.eval.face import TinyFaceEmbedder
    from polyvivid.eval.loading import load_module

    torch.manual_seed(0)
    embedder, faces = TinyFaceEmbedder().eval(), torch.rand(2, 3, 112, 112) * 2 - 1
    torch.export.save(torch.export.export(embedder, (faces,)), str(tmp_path / "embedder.pt2"))
    assert torch.allclose(load_module(str(tmp_path / "embedder.pt2"))(faces), embedder(faces), atol=1e-6)


def test_dino_features_of_the_same_image_match_and_subject_frames_are_counted():
    embedder = DinoEmbedder.load(preset="tiny")
    tiger, dog = draw_subject("tiger", SIZE), draw_subject("dog", SIZE)
    same, other = embedder.embed([tiger, tiger, dog])[[0, 0]], embedder.embed([tiger, dog])
    assert float(same[0] @ same[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(other[0] @ other[1]) < 0.9999
    from polyvivid.data.grounding import Grounder
    from polyvivid.data.segmentation import Segmenter

    score = subject_similarity(embedder, Grounder.load(preset="tiny"), Segmenter.load(preset="tiny"),
                               np.stack([np.asarray(tiger)] * 3), tiger, "tiger", caption="a tiger runs")
    assert score.frames == 3 and 0 <= score.frames_found <= 3 and score.frames_absent == 3 - score.frames_found
    assert score.similarity is None or -1 <= score.similarity <= 1
    strict = Grounder.load(preset="tiny", min_score=1.0)  # no random-weight score reaches 1: never found
    absent = subject_similarity(embedder, strict, Segmenter.load(preset="tiny"), np.stack([np.asarray(tiger)] * 3),
                                tiger, "tiger", caption="a tiger runs")
    assert (absent.similarity, absent.frames_found, absent.frames_absent) == (None, 0, 3)


class FramesGrounder:
    """Finds the subject in the frames listed (by call order) with a whole-image box; records captions."""

    def __init__(self, found_in: set[int]):
        self.found_in, self.calls, self.captions = found_in, 0, []

    def ground(self, image, phrases, caption=None):
        from polyvivid.data.grounding import Grounding

        self.captions.append(caption)
        found, self.calls = self.calls in self.found_in, self.calls + 1
        w, h = image.size
        return [Grounding(p, 0.9, True, [0.0, 0.0, float(w), float(h)], -1.0) if found else Grounding(p, 0.2, False)
                for p in phrases]


class WholeBoxSegmenter:
    def segment(self, image, box):
        return np.ones((image.height, image.width), dtype=bool)


def test_dino_sim_averages_over_the_frames_where_the_subject_is_found_and_counts_the_absent():
    embedder = DinoEmbedder.load(preset="tiny")
    tiger = draw_subject("tiger", SIZE)
    frames = np.stack([np.asarray(tiger)] * 4)
    grounder = FramesGrounder(found_in={0, 2})
    score = subject_similarity(embedder, grounder, WholeBoxSegmenter(), frames, tiger, "tiger",
                               caption="a man rides a tiger")
    assert grounder.captions == ["a man rides a tiger"] * 4
    assert (score.frames, score.frames_found, score.frames_absent) == (4, 2, 2)
    # the found frames are the reference itself: 1, not diluted by the absent frames (which would give 0.5)
    assert score.similarity == pytest.approx(1.0, abs=1e-5)
    nowhere = subject_similarity(embedder, FramesGrounder(found_in=set()), WholeBoxSegmenter(), frames, tiger, "tiger")
    assert nowhere.similarity is None and nowhere.frames_absent == 4


def test_frechet_distance_maths():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 5))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-9)  # same covariance
    b = rng.normal(size=(64, 5)) * 2.0
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    # against the textbook form with an eigen-decomposed product (no scipy here)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    trace_root = np.sqrt(np.linalg.eigvals(ca @ cb).real.clip(0)).sum()
    textbook = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * trace_root
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 videos"):
        frechet_distance(a[:1], b)


class TinyI3D(torch.nn.Module):
    """Same call as StyleGAN-V's i3d_torchscript.pt: (videos [N, 3, T, H, W] in -1..1, flags) -> [N, 8]."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 8)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert x.dim() == 5 and x.shape[1] == 3 and x.shape[3] == 224 and x.shape[4] == 224
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        return self.proj(x.mean(dim=(2, 3, 4)) + x.std(dim=(2, 3, 4)))


def test_fvd_is_zero_for_the_same_videos_and_grows_with_difference(tmp_path, clip):
    torch.manual_seed(0)
    torch.jit.script(TinyI3D()).save(str(tmp_path / "i3d.pt"))
    i3d = I3DFeatures.load(str(tmp_path / "i3d.pt"))
    videos = [moving_video(8, seed=s) for s in range(4)]
    darker = [(v * 0.5).astype(np.uint8) for v in videos]
    for features in (i3d, ClipVideoFeatures(clip)):
        assert fvd(features, videos, videos) == pytest.approx(0.0, abs=1e-6)
        assert fvd(features, videos, darker) > 1e-4
