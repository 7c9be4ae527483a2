"""Synthetic data, the manifest format and the training loader."""

from __future__ import annotations

import json

import pytest
import torch

from polyvivid.data.dataset import MANIFEST, read_manifest
from polyvivid.data.loader import SampleError, SubjectVideoDataset, pick_frames, window_starts
from polyvivid.data.synthetic import write_synthetic_dataset
from polyvivid.storage import open_store
from polyvivid.video import decode_mp4


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(open_store(str(root)), videos=6, seed=0, size=64, frames=9)
    return root


def test_synthetic_dataset_is_in_the_training_format(dataset_dir):
    store = open_store(str(dataset_dir))
    samples, rejected = read_manifest(store)
    assert len(samples) == 6 and rejected == []
    for s in samples:
        assert 1 <= len(s.subjects) <= 3
        for subject in s.subjects:
            assert subject.word in s.caption and store.exists(subject.image) and store.exists(subject.mask)
        assert decode_mp4(store.read_bytes(s.video)).shape == (9, 64, 64, 3)
    assert any(len(s.subjects) > 1 for s in samples)


def test_synthetic_data_is_a_function_of_the_seed(tmp_path):
    a, b, c = (write_synthetic_dataset(open_store(str(tmp_path / n)), 2, seed=s, size=32, frames=5)
               for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert [r.caption for r in a] == [r.caption for r in b]
    assert (tmp_path / "a" / "subjects" / "000000_0.png").read_bytes() == (tmp_path / "b" / "subjects" / "000000_0.png").read_bytes()
    # The frames are identical; libx264's bytes are not always (they were seen to vary with what the
    # process encoded before), so compare decoded frames within the codec's loss.
    clip_a, clip_b = (decode_mp4((tmp_path / n / "clips" / "000000.mp4").read_bytes()).astype(int) for n in "ab")
    assert clip_a.shape == clip_b.shape and abs(clip_a - clip_b).mean() < 2
    assert [r.caption for r in a] != [r.caption for r in c]


def test_loader_samples_resizes_and_keeps_every_subject(dataset_dir):
    ds = SubjectVideoDataset(str(dataset_dir))
    multi = next(i for i, s in enumerate(ds.samples) if len(s.subjects) > 1)
    sample = ds.load(ds.samples[multi], 5, 32, 48, 4, torch.Generator().manual_seed(0))
    assert sample.video.shape == (3, 5, 32, 48)
    assert -1.0 <= float(sample.video.min()) and float(sample.video.max()) <= 1.0
    assert [w for w, _ in sample.subjects] == [s.word for s in ds.samples[multi].subjects]
    # never cut to fewer subjects: the caption would name one the model is not shown (stage views select instead)
    with pytest.raises(SampleError, match="more subjects than maxSubjects"):
        ds.load(ds.samples[multi], 5, 32, 48, 1, torch.Generator().manual_seed(0))


def test_frame_windows_are_contiguous_and_never_repeat_frames():
    g = torch.Generator().manual_seed(0)
    window = pick_frames(17, 9, g)
    assert len(window) == 9 and (window[1:] - window[:-1] == 1).all() and window[-1] < 17
    assert (pick_frames(9, 9, g) == range(9)).all()
    with pytest.raises(SampleError, match="^shorter than the stage's frames: 3 frames, 9 wanted$"):
        pick_frames(3, 9, g)


def test_frame_windows_start_anywhere_or_at_evenly_spaced_starts():
    assert window_starts(17, 9) == list(range(9))  # windows 0: anywhere
    assert window_starts(17, 9, 4) == [0, 3, 5, 8]  # first and last included
    assert window_starts(17, 9, 1) == [0] and window_starts(10, 9, 4) == [0, 1]  # fewer when the clip has fewer
    # A pick is one draw whichever set it picks from: every window of the set comes up, and only those.
    picks = {int(pick_frames(17, 9, torch.Generator().manual_seed(s), 4)[0]) for s in range(100)}
    assert picks == {0, 3, 5, 8}


def test_order_is_seeded_and_covers_every_sample_each_epoch(dataset_dir):
    ds = SubjectVideoDataset(str(dataset_dir))
    epoch0 = [ds.index_at(p, seed=3) for p in range(6)]
    assert sorted(epoch0) == list(range(6))
    assert epoch0 == [SubjectVideoDataset(str(dataset_dir)).index_at(p, seed=3) for p in range(6)]
    assert epoch0 != [ds.index_at(p, seed=3) for p in range(6, 12)] or epoch0 != [ds.index_at(p, seed=4) for p in range(6)]


def test_corrupt_samples_are_skipped_counted_and_replaced(tmp_path):
    store = open_store(str(tmp_path))
    records = write_synthetic_dataset(store, 3, seed=0, size=32, frames=5)
    store.write_bytes(records[1].video, b"this is not an mp4")
    store.write_bytes(records[2].subjects[0].image, b"nor a png")
    lines = store.read_text(MANIFEST).splitlines()
    lines.append(json.dumps({"id": "x", "video": "clips/x.mp4", "caption": "no subject word", "subjects": [
        {"word": "cat", "image": "s.png"}]}))
    lines.append("{not json")
    store.write_text(MANIFEST, "\n".join(lines) + "\n")
    ds = SubjectVideoDataset(str(tmp_path))
    assert len(ds) == 3  # the two bad manifest lines are rejected with reasons
    got = [ds.get(p, 0, 5, 32, 32, 3, torch.Generator().manual_seed(p)).id for p in range(6)]
    assert set(got) == {records[0].id}
    assert ds.skipped["invalid manifest line"] == 2 and sum(ds.skipped.values()) == 4
    store.write_text(MANIFEST, "\n".join(lines[1:3]) + "\n")  # only the two broken samples
    broken = SubjectVideoDataset(str(tmp_path))
    with pytest.raises(SampleError, match="no readable sample"):
        broken.get(0, 0, 5, 32, 32, 3, torch.Generator())


def test_s3_lines_that_leave_the_dataset_are_skipped_and_counted(s3_bucket):
    """A line whose paths step out of the dataset's prefix ('..', absolute, another URI) is a bad sample,
    and the store itself refuses a key with '..' (S3 keys are literal: it would address another key)."""
    from polyvivid.storage import StorageError

    store = open_store(f"{s3_bucket}/data")
    records = write_synthetic_dataset(store, 2, seed=0, size=32, frames=5)
    open_store(s3_bucket).write_bytes("other/clip.mp4", store.read_bytes(records[0].video))
    escaping = [{"video": "../other/clip.mp4"}, {"video": "/other/clip.mp4"}, {"video": f"{s3_bucket}/other/clip.mp4"},
                {"subjects": [{"word": records[0].subjects[0].word, "image": "subjects/../../other/x.png"}]}]
    lines = store.read_text(MANIFEST).splitlines()
    lines += [json.dumps({**records[0].model_dump(exclude_none=True), "id": f"bad{i}", **change})
              for i, change in enumerate(escaping)]
    store.write_text(MANIFEST, "\n".join(lines) + "\n")
    ds = SubjectVideoDataset(f"{s3_bucket}/data")
    assert [s.id for s in ds.samples] == [r.id for r in records]
    assert ds.skipped["invalid manifest line"] == len(escaping)
    with pytest.raises(StorageError, match="'..' segment"):
        store.read_bytes("../other/clip.mp4")
    with pytest.raises(StorageError, match="'..' segments are not allowed"):
        open_store(f"{s3_bucket}/data/../other")
