"""What each training stage reads (issue 20, items 8-10): composed structured captions, per-stage views
of the dataset by subject count, and frame windows that never repeat frames. Real synthetic datasets on
disk; the last two tests are real `polyvivid train` runs."""

from __future__ import annotations

import functools
import json
from collections import Counter

import pytest
import torch

from polyvivid.api.training import Stage
from polyvivid.data.dataset import MANIFEST, SampleRecord, read_manifest, write_manifest
from polyvivid.data.loader import (
    SHORT_CLIP, SampleError, StepLoader, StepRequest, SubjectVideoDataset, caption_variants, compose_caption, stage_view,
    step_batches,
)
from polyvivid.data.synthetic import write_synthetic_dataset
from polyvivid.model.request import word_in_prompt
from polyvivid.storage import open_store
from polyvivid.train.trainer import sample_generator
from polyvivid.video import decode_mp4, encode_mp4
from tests.train.conftest import polyvivid, progress, training_manifest, write_spec

# a synthetic dataset's clips have 1, 2, 3 subjects in turn (polyvivid.data.synthetic.write_synthetic_dataset)
SUBJECTS = [1, 2, 3] * 4


def structured(record: SampleRecord) -> SampleRecord:
    """The record with the rest of a structured caption, as curation's captioner writes it."""
    words = " and ".join(f"a {s.word}" for s in record.subjects)
    return record.model_copy(update=dict(short_caption=f"{words[0].upper()}{words[1:]} move", background="a plain studio",
                                         style="flat colours, no shading", camera="Static camera"))


def dataset(root, change=lambda records: records, videos=12) -> SubjectVideoDataset:
    """A synthetic dataset (seed 0, 9 frames of 32x32) whose manifest `change` rewrote."""
    store = open_store(str(root))
    records = write_synthetic_dataset(store, videos, seed=0, size=32, frames=9)
    assert [len(r.subjects) for r in records] == SUBJECTS[:videos]
    write_manifest(store, change(records))
    return SubjectVideoDataset(str(root))


def singles(records: list[SampleRecord]) -> list[SampleRecord]:
    return [r for r in records if len(r.subjects) == 1]


def stage(name: str, **fields) -> Stage:
    return Stage(name=name, max_subjects=fields.pop("max_subjects", 1 if name == "identity" else 3), **fields)


# ----------------------------------------------------------------------------------------------- captions
def test_sample_records_keep_the_structured_caption_and_old_manifests_still_load(tmp_path):
    store = open_store(str(tmp_path))
    base = write_synthetic_dataset(store, 1, seed=0, size=32, frames=5)[0]
    plain = json.loads(store.read_text(MANIFEST))
    assert set(plain) == {"id", "video", "caption", "subjects", "fps", "num_frames", "width", "height"}
    full = structured(base).model_copy(update=dict(unmatched_subjects=["a dog"]))
    lines = [json.dumps(plain), full.model_dump_json(exclude_defaults=True),
             json.dumps({**plain, "id": "blank", "short_caption": "", "style": "  "})]  # curation writes "" when absent
    store.write_text(MANIFEST, "\n".join(lines) + "\n")
    (old, new, blank), rejected = read_manifest(store)
    assert rejected == []
    assert old.short_caption is old.background is old.style is old.camera is None and old.unmatched_subjects == []
    assert new == full and new.unmatched_subjects == ["a dog"] and new.camera == "Static camera"
    assert blank.short_caption is None and blank.style is None


def test_compose_caption_mixes_the_parts_keeps_every_subject_word_and_is_seeded(tmp_path):
    records = write_synthetic_dataset(open_store(str(tmp_path)), 3, seed=0, size=32, frames=5)
    record = structured(records[1])  # two subjects
    composed = [compose_caption(record, torch.Generator().manual_seed(seed)) for seed in range(200)]
    assert composed == [compose_caption(record, torch.Generator().manual_seed(seed)) for seed in range(200)]
    assert all(word_in_prompt(s.word, text) for text in composed for s in record.subjects)
    starts = Counter("short" if text.startswith(record.short_caption) else "long" for text in composed)
    assert starts["long"] + starts["short"] == 200 and 70 < starts["short"] < 130  # each about half the time
    for extra in ("A plain studio", "Flat colours, no shading", "Static camera"):
        assert 70 < sum(extra in text for text in composed) < 130
    assert f"{record.short_caption}. A plain studio. Flat colours, no shading. Static camera" in composed
    assert record.caption in composed  # the long caption alone, unchanged

    # A short caption that leaves a subject out is never used: the fusion template needs every word.
    lacking = record.model_copy(update=dict(short_caption=f"A {record.subjects[0].word} moves"))
    assert not any(compose_caption(lacking, torch.Generator().manual_seed(s)).startswith(lacking.short_caption)
                   for s in range(50))
    # A record with only the long caption (every manifest before structured captions) reads it as is.
    assert {compose_caption(records[0], torch.Generator().manual_seed(s)) for s in range(20)} == {records[0].caption}

    # caption_variants lists every caption compose_caption can give (what precompute encodes), each once.
    assert set(caption_variants(record)) == set(composed) and len(caption_variants(record)) == 16
    assert caption_variants(lacking)[0] == lacking.caption and len(caption_variants(lacking)) == 8
    assert caption_variants(records[0]) == [records[0].caption]


def test_a_training_sample_reads_a_composed_caption_fixed_by_seed_and_position(tmp_path):
    ds = dataset(tmp_path, lambda records: [structured(r) for r in records])
    view = stage_view(ds, stage("interaction"), 5)[0]

    def read(position, seed=0):
        sample = view.get(position, seed, 5, 32, 32, 3, sample_generator(seed, position))
        return sample.id, sample.caption, sample.video

    first = [read(p) for p in range(16)]
    again = [read(p) for p in range(16)]  # a resumed run asks for the same positions
    assert [(i, c) for i, c, _ in first] == [(i, c) for i, c, _ in again]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert len({c for _, c, _ in first}) > len({i for i, _, _ in first})  # captions vary beyond the samples


# ----------------------------------------------------------------------------------------------- stages
def test_each_stage_reads_only_its_own_samples_in_a_seeded_order(tmp_path):
    def change(records):
        records[3].unmatched_subjects = ["a wooden table"]  # its caption names a subject without an image
        return records

    ds = dataset(tmp_path, change)
    identity, fallback = stage_view(ds, stage("identity"), 5)
    assert fallback is None and sorted(identity.indices) == [0, 6, 9]  # exactly one subject, nothing unmatched
    interaction, fallback = stage_view(ds, stage("interaction", max_subjects=2), 5)
    assert fallback is None and sorted(interaction.indices) == [1, 4, 7, 10]  # 2 subjects (3 would be cut)
    assert stage("interaction").min_subjects == 2 and stage("identity").min_subjects == 1

    again = stage_view(ds, stage("interaction", max_subjects=2), 5)[0]
    assert [again.index_at(p, seed=5) for p in range(12)] == [interaction.index_at(p, seed=5) for p in range(12)]
    for view in (identity, interaction):
        for epoch in range(3):  # a permutation of the view alone, every epoch
            order = [view.index_at(epoch * len(view) + p, seed=5) for p in range(len(view))]
            assert sorted(order) == sorted(view.indices)
        read = {view.get(p, 5, 5, 32, 32, 2, torch.Generator().manual_seed(p)).id for p in range(3 * len(view))}
        assert read == {ds.samples[i].id for i in view.indices}
    assert len(ds) == 12 and sum(ds.skipped.values()) == 0  # selection is not skipping


def test_the_interaction_stage_falls_back_to_fewer_subjects_and_otherwise_stops_clearly(tmp_path):
    single = dataset(tmp_path / "single", singles)  # no clip with two subjects
    view, fallback = stage_view(single, stage("interaction"), 5)
    assert sorted(view.indices) == [0, 1, 2, 3]
    assert fallback == "no sample has 2..3 subjects and at least 5 frames: training on the 4 with 1..3 subjects"
    with pytest.raises(SampleError, match=r"^stage interaction: no sample has 2\.\.3 subjects and at least 5 frames "
                                          r"in .*single$"):
        stage_view(single, stage("interaction", fallback=False), 5)

    mixed = dataset(tmp_path / "mixed")  # 8 clips with 2..3 subjects, 4 with one
    assert stage_view(mixed, stage("interaction", min_samples=8), 5)[1] is None
    view, fallback = stage_view(mixed, stage("interaction", min_samples=9), 5)
    assert len(view) == 12 and fallback.startswith("8 samples with 2..3 subjects and at least 5 frames, fewer than "
                                                   "minSamples 9: training on the 12")

    crowded = dataset(tmp_path / "crowded", lambda records: [r for r in records if len(r.subjects) > 1])  # no single-subject clip: nothing to fall to
    with pytest.raises(SampleError, match=r"^stage identity: no sample has 1 subject and at least 5 frames "
                                          r"\(and no unmatched_subjects\) in "):
        stage_view(crowded, stage("identity"), 5)


# ----------------------------------------------------------------------------------------------- frames
def test_clips_shorter_than_the_window_are_dropped_and_counted_never_stretched(tmp_path):
    def change(records):
        records[0].num_frames = 5  # the manifest says so: not in a 9-frame view, never read for it
        records[6].num_frames = None  # unknown: found out when read
        return records

    ds = dataset(tmp_path, change)
    store = open_store(str(tmp_path))
    clip = decode_mp4(store.read_bytes(ds.samples[6].video))
    store.write_bytes(ds.samples[6].video, encode_mp4(clip[:7], fps=8))  # 7 frames: enough for 5, not for 9

    low, full = (stage_view(ds, stage("identity"), frames)[0] for frames in (5, 9))
    assert sorted(low.indices) == [0, 3, 6, 9] and sorted(full.indices) == [3, 6, 9]
    assert ds.skipped == Counter({SHORT_CLIP: 1})
    for _ in range(2):
        got = [full.get(p, 0, 9, 32, 32, 1, torch.Generator().manual_seed(p)) for p in range(6)]
        assert {s.id for s in got} == {ds.samples[3].id, ds.samples[9].id}  # the next readable one stands in
        assert all(s.video.shape == (3, 9, 32, 32) for s in got)
        assert ds.skipped == Counter({SHORT_CLIP: 2})  # each short clip counted once
    low_res_reads = {low.get(p, 0, 5, 32, 32, 1, torch.Generator().manual_seed(p)).id for p in range(8)}
    assert low_res_reads == {ds.samples[i].id for i in (0, 3, 6, 9)}  # long enough for 5 frames


def test_a_broken_sample_is_replaced_the_same_way_whether_it_is_known_or_found_out(tmp_path):
    """Its frames are drawn before its subject image fails: the stand-in must not depend on that draw, or a
    loader worker (or a resumed run) that already knows the sample is bad would read other data."""
    def change(records):
        records[3].subjects[0].image = "subjects/missing.png"
        return records

    ds = dataset(tmp_path, change)
    view = stage_view(ds, stage("identity"), 5)[0]
    assert view.store is ds.store  # a view shares its dataset's store
    position = next(p for p in range(8) if view.index_at(p, seed=5) == 3)
    reads = []
    for _ in range(2):  # finds out, then knows
        generator = torch.Generator().manual_seed(11)
        sample = view.get(position, 5, 5, 32, 32, 1, generator)
        reads.append((sample.id, sample.video, sample.caption, generator.get_state()))
    assert 3 in view._bad and reads[0][0] != ds.samples[3].id
    assert reads[0][0] == reads[1][0] and torch.equal(reads[0][1], reads[1][1]) and torch.equal(reads[0][3], reads[1][3])


# ----------------------------------------------------------------------------------------------- loader workers
def test_loader_workers_read_what_the_training_process_would_in_step_order(tmp_path):
    def change(records):
        records[3].video = "clips/missing.mp4"  # skipped wherever it is read, and counted once
        return records

    requests = [StepRequest(step, "identity" if step < 3 else "interaction", (2 * step, 2 * step + 1), 5, 32, 32, 3)
                for step in range(6)]
    dataset(tmp_path, change)
    loads = {}
    for workers in (0, 2):
        ds = SubjectVideoDataset(str(tmp_path))  # each run its own skip counts
        views = {name: stage_view(ds, stage(name), 5)[0] for name in ("identity", "interaction")}
        loader = StepLoader(views, requests, 0, functools.partial(sample_generator, 0))
        loads[workers] = list(step_batches(loader, workers, prefetch_steps=2))
    for a, b in zip(*loads.values(), strict=True):
        assert a.step == b.step and a.error is b.error is None
        assert [s.id for s, _ in a.samples] == [s.id for s, _ in b.samples]
        assert all(torch.equal(x.video, y.video) and x.caption == y.caption and torch.equal(gx, gy)
                   for (x, gx), (y, gy) in zip(a.samples, b.samples))
    assert [l.step for l in loads[2]] == list(range(6))
    skipped = [pair for l in loads[2] for pair in l.skipped]
    assert skipped == [pair for l in loads[0] for pair in l.skipped] and len(skipped) == 1 and skipped[0][0] == 3


# ----------------------------------------------------------------------------------------------- runs
def _records_for_run(records):
    """Only single-subject clips (so the interaction stage must fall back); one names an ungrounded
    subject, one is too short for the stages' 5 frames."""
    chosen = singles(records)
    chosen[0].unmatched_subjects = ["a wooden table"]
    chosen[1].num_frames = 3
    return chosen


def test_a_run_trains_each_stage_on_its_view_and_records_the_fallback(tmp_path):
    data = tmp_path / "data"
    dataset(data, _records_for_run)
    output = tmp_path / "run"
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(str(data), str(output), steps=(1, 1), low_res=0,
                                                                dataLoader={"workers": 2}))  # skipped in a worker
    result = polyvivid("train", str(spec))
    assert result.returncode == 0, result.stderr[-2000:]
    state = progress(str(output))
    assert state["status"] == "succeeded" and state["samples_skipped"] == 1  # the short clip
    assert state["stage_data"]["identity/full"] == {"samples": 2, "frames": 5, "fallback": None}
    fallback = "no sample has 2..3 subjects and at least 5 frames: training on the 3 with 1..3 subjects"
    assert state["stage_data"]["interaction/full"] == {"samples": 3, "frames": 5, "fallback": fallback}
    assert f"stage interaction/full: {fallback}" in result.stderr
    assert "stage identity/full: 2 of 4 samples (1 subject, at least 5 frames)" in result.stderr


def test_a_stage_without_samples_stops_the_run_with_one_line(tmp_path):
    data = tmp_path / "data"
    dataset(data, _records_for_run)
    manifest = training_manifest(str(data), str(tmp_path / "run"), steps=(1, 1), low_res=0)
    manifest["spec"]["stages"][1]["fallback"] = False
    result = polyvivid("train", str(write_spec(tmp_path / "spec.yaml", manifest)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"polyvivid: error: stage interaction: no sample has 2..3 subjects and at least 5 frames in {data}")


def test_the_skipped_samples_counter_grows_with_the_skips(tmp_path):
    """polyvivid_train_samples_skipped counts what progress.json's samples_skipped says, once each."""
    import urllib.request

    from polyvivid.storage import open_store
    from polyvivid.train.progress import ProgressReporter

    from ..conftest import free_port

    port = free_port()
    reporter = ProgressReporter(open_store(str(tmp_path)), total_steps=3, metrics_port=port)
    try:
        for step, skipped in ((1, 0), (2, 2), (3, 3)):
            reporter.step(step, 0.5, 0.1, 2, "identity", "full", samples_skipped=skipped)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        reporter.close()
    assert "polyvivid_train_samples_skipped_total 3.0" in metrics
    assert reporter.state["samples_skipped"] == 3
