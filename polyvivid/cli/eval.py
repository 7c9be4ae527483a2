"""`polyvivid eval`: score videos against an evaluation test set (the paper's Table 1 metrics), generating
the missing ones first with --model."""

from __future__ import annotations

from pathlib import Path

from ..model.options import PRESET_NAMES, SMOKE_PRESET
from .options import FRAMES, GUIDANCE, SIDE, STEPS, UsageError, int_in


def register(subparsers) -> None:
    ev = subparsers.add_parser(
        "eval", help="score generated videos: Face-sim, DINO-sim, CLIP-B/L, temporal consistency, FVD",
        description="Score VIDEOS/CASE_ID.mp4 against the cases (prompt and subject images) and print a table "
                    "with the paper's Table 1 columns; --out writes the report as JSON (means, per-case scores, "
                    "counts of frames without a face or subject). Each metric needs its models (paths or s3:// "
                    "URIs); --preset tiny uses random tiny ones (smoke tests: the numbers mean nothing).",
        epilog="example: polyvivid eval --videos s3://runs/r1/eval --cases cases.jsonl --metrics clip-b,temporal "
               "--clip-b models/clip-vit-base-patch32 --out report.json")
    ev.add_argument("--videos", required=True, metavar="URI", help="directory or s3:// prefix of CASE_ID.mp4 files")
    ev.add_argument("--cases", required=True, metavar="CASES.jsonl", help="the test set (see `polyvivid eval-cases`)")
    ev.add_argument("--metrics", default="face,dino,clip-b,clip-l,temporal,fvd",
                    help="comma-separated, from face, dino, clip-b, clip-l, temporal, fvd (default: all)")
    ev.add_argument("--out", metavar="REPORT.json", help="write the report here")
    ev.add_argument("--label", help="the table row's name (default: the videos' directory name)")
    ev.add_argument("--compare", action="append", default=[], metavar="REPORT.json",
                    help="add an earlier report as a row of the table (repeatable)")
    ev.add_argument("--max-frames", type=int_in(2, 100_000), default=None, metavar="N",
                    help="score N evenly spaced frames per video (default: all)")
    ev.add_argument("--real-videos", metavar="URI", help="real videos (*.mp4) for FVD (default: each case's "
                                                         "reference_video)")
    gen = ev.add_argument_group("generating the videos first (with --model: cases without a video are generated "
                                "into --videos)")
    gen.add_argument("--model", metavar="URI", help="PolyVivid weights or checkpoint (path, s3:// URI) or a preset")
    gen.add_argument("--base-model", metavar="URI", help="where the weights' base model lives now (hunyuanvideo/, llava/)")
    gen.add_argument("--num-frames", type=FRAMES, default=33, help="frames per video, 4k+1 (default 33)")
    gen.add_argument("--height", type=SIDE, default=256, help="default 256")
    gen.add_argument("--width", type=SIDE, default=256, help="default 256")
    gen.add_argument("--steps", type=STEPS, default=30, help="denoising steps (default 30)")
    gen.add_argument("--guidance", type=GUIDANCE, default=6.0, help="embedded guidance scale (default 6.0)")
    models = ev.add_argument_group("models (directories in Hugging Face layout, or TorchScript / .pt2 files)")
    models.add_argument("--clip-b", metavar="DIR", help="CLIP ViT-B: CLIP-B, temporal consistency")
    models.add_argument("--clip-l", metavar="DIR", help="CLIP ViT-L: CLIP-L")
    models.add_argument("--dinov2", metavar="DIR", help="DINOv2: DINO-sim")
    models.add_argument("--grounding", metavar="DIR", help="Florence-2: finds each subject for DINO-sim")
    models.add_argument("--sam2", metavar="DIR", help="SAM2: cuts each subject out for DINO-sim")
    models.add_argument("--face-detector", metavar="FILE", help="TorchScript face detector: Face-sim")
    models.add_argument("--face-embedder", metavar="FILE", help="TorchScript ArcFace-style embedder: Face-sim")
    models.add_argument("--i3d", metavar="FILE", help="TorchScript I3D for FVD (default: CLIP-B features)")
    models.add_argument("--preset", choices=[SMOKE_PRESET], help="random tiny models for every metric")
    ev.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..eval.cases import InvalidCases, read_cases
    from ..eval.runner import METRICS, EvalModels, MissingModel, evaluate, format_table, read_videos
    from ..storage import StorageError

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UsageError(f"--metrics: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    models = EvalModels(clip_b=args.clip_b, clip_l=args.clip_l, dinov2=args.dinov2, grounding=args.grounding,
                        sam2=args.sam2, face_detector=args.face_detector, face_embedder=args.face_embedder,
                        i3d=args.i3d, preset=args.preset)
    earlier = []
    for path in args.compare:
        try:
            earlier.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise UsageError(f"--compare {path}: not a report ({e.__class__.__name__})") from None
    try:
        models.check(metrics)
        cases = read_cases(args.cases)
        label = args.label or args.videos.rstrip("/").rsplit("/", 1)[-1]
        if args.model:
            _generate_eval_videos(args, cases)
        real = read_videos(args.real_videos) if args.real_videos else None
        if real == []:
            raise UsageError(f"--real-videos: no .mp4 files under {args.real_videos}")
        report = evaluate(cases, args.videos, metrics, models, real_videos=real, max_frames=args.max_frames,
                          label=label)
    except (InvalidCases, MissingModel, StorageError) as e:
        raise UsageError(str(e)) from None
    except ValueError as e:  # no videos found, FVD with too few videos
        raise UsageError(str(e)) from None
    print(format_table(earlier + [report]))
    counts = report["counts"]
    print(f"{counts['videos']}/{counts['cases']} cases scored"
          + (f"; missing videos: {', '.join(counts['videos_missing'])}" if counts["videos_missing"] else "")
          + (f"; frames without a face: {counts['frames_without_face']}" if "face" in metrics else "")
          + (f"; frames without the subject: {counts['frames_without_subject']}" if "dino" in metrics else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _generate_eval_videos(args, cases) -> None:
    from ..eval.generate import GenerationSettings, generate_case_videos, load_generator
    from ..model.request import InvalidRequest
    from ..storage import StorageError

    try:
        pipe = load_generator(args.model, base=args.base_model)
    except (FileNotFoundError, OSError, StorageError, ValueError) as e:
        known = f" (or a preset: {', '.join(PRESET_NAMES)})" if "://" not in args.model else ""
        raise UsageError(f"--model: {e}{known}") from None
    settings = GenerationSettings(num_frames=args.num_frames, height=args.height, width=args.width, steps=args.steps,
                                  guidance=args.guidance)
    try:
        made = generate_case_videos(pipe, cases, args.videos, settings)
    except InvalidRequest as e:
        raise UsageError(f"generation: {e}") from None
    print(f"generated {len(made)} videos into {args.videos} ({len(cases) - len(made)} were there already)")
