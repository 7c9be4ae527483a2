"""The evaluation stage at the end of a training (spec.evaluation): rank 0, after the final weights are
stored and the process group is gone, loads them as a user would (load_pipeline on OUTPUT/final),
generates every case into OUTPUT/eval/videos/ and scores them (polyvivid/eval). What it returns goes
into progress.json (`evaluation`) and from there into the training's status. A failed evaluation is
reported there and does not fail the training: the weights are already stored."""

from __future__ import annotations

import json
import logging

import torch

from ..api.training import TrainingSpec
from ..storage import ArtifactStore, StorageError

log = logging.getLogger(__name__)


def run_evaluation(spec: TrainingSpec, store: ArtifactStore, device: torch.device) -> dict:
    from ..eval.cases import InvalidCases, read_cases
    from ..eval.generate import GenerationSettings, generate_case_videos, load_generator
    from ..eval.runner import EvalModels, MissingModel, evaluate, read_videos

    ev = spec.evaluation
    try:
        cases = read_cases(ev.cases)[: ev.max_cases]
        models = EvalModels.from_spec(ev.models)
        models.check(list(ev.metrics))
        videos = store.uri("eval/videos")
        settings = GenerationSettings(num_frames=ev.num_frames, height=ev.height, width=ev.width, steps=ev.steps,
                                      guidance=ev.guidance)
        pipe = load_generator(store.uri("final"), device=device)  # its card names the base this run trained on
        made = generate_case_videos(pipe, cases, videos, settings, progress=False)
        log.info("evaluation: %d videos generated (%d were already stored)", len(made), len(cases) - len(made))
        del pipe  # its memory back before the metric models load
        real = read_videos(ev.real_videos) if ev.real_videos else None
        report = evaluate(cases, videos, list(ev.metrics), models, real_videos=real, max_frames=ev.max_frames,
                          label=spec.output.rstrip("/").rsplit("/", 1)[-1], progress=False)
        store.write_text("eval/report.json", json.dumps(report, indent=2) + "\n")
    except (InvalidCases, MissingModel, StorageError, ValueError, FileNotFoundError, OSError) as e:
        log.error("evaluation failed: %s", e)
        return {"error": str(e).splitlines()[0][:500]}
    return {"metrics": report["metrics"], "report": store.uri("eval/report.json"),
            "videos": report["counts"]["videos"], "cases": report["counts"]["cases"]}
