"""`polyvivid` command line.

Bad input exits 2 with one line on stderr (no traceback). torch and the model load only inside
the commands that need them, so `polyvivid --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .api.common import MAX_FRAMES, MAX_GUIDANCE, MAX_SEED, MAX_SIDE, MAX_STEPS

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)


def _in_range(convert, what: str, low, high):
    """An argparse type: `convert(text)` within [low, high] (the documented bounds; NaN and infinity are
    outside every range), else a one-line error."""
    show = (lambda v: f"{v:g}") if convert is float else str

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:  # False for NaN
            raise argparse.ArgumentTypeError(f"{text} is outside {show(low)}..{show(high)}")
        return value
    return parse


def int_in(low: int, high: int):
    return _in_range(int, "an integer", low, high)


def number_in(low: float, high: float):
    return _in_range(float, "a number", low, high)


# The types of the options several commands share, with the documented bounds (polyvivid/api/common.py).
PORT = int_in(1, 65535)
FRAMES, SIDE, STEPS = int_in(1, MAX_FRAMES), int_in(16, MAX_SIDE), int_in(1, MAX_STEPS)
GUIDANCE, SEED = number_in(0, MAX_GUIDANCE), int_in(0, MAX_SEED)


def output_uri(text: str) -> str:
    """An argparse type: where to write, without '..' segments (an S3 key would take them literally, a
    path would leave the directory it names)."""
    from .storage import has_dot_segments

    if has_dot_segments(text):
        raise argparse.ArgumentTypeError(f"{text!r}: '..' is not allowed in an output; give the path without it")
    return text


def _subject(value: str) -> tuple[str, str]:
    word, sep, image = value.partition("=")
    if not sep or not word.strip() or not image:
        raise argparse.ArgumentTypeError(f"expected WORD=IMAGE, got {value!r}")
    return word.strip(), image


def _add_prompt_and_subjects(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="what happens; every subject WORD must appear in it")
    parser.add_argument("--subject", action="append", type=_subject, default=[], metavar="WORD=IMAGE",
                        help="a subject: its word in the prompt and an image file (PNG/JPEG); repeat per subject")


def _add_ray_auth_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--insecure-ray-no-auth", action="store_true",
                        help="with --local: start Ray without its token authentication (a warning says so); "
                             "Ray listens on 127.0.0.1 either way")


def _existing_subject_file(word: str, path: str) -> str:
    if not os.path.isfile(path):
        raise UsageError(f"subject {word!r}: image not found: {path}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="polyvivid",
        description="PolyVivid: multi-subject video customization: generation, training, data curation "
                    "and serving.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    gen = sub.add_parser(
        "generate", help="make a video from a prompt and subject images",
        description="Generate a video in which every subject keeps the identity of its image and the "
                    "subjects interact as the prompt says. Writes OUTPUT (mp4) and a PNG contact sheet "
                    "of its frames beside it (OUTPUT with _frames.png). Same seed, same video.",
        epilog="example: polyvivid generate --preset tiny --prompt 'A man plays the guitar' "
               "--subject man=man.png --subject guitar=guitar.png --output out/video.mp4",
    )
    _add_prompt_and_subjects(gen)
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR_OR_URI",
                        help="a checkpoint directory or s3:// URI (save_pretrained layout, or a training "
                             "run's final/ with PolyVivid weights)")
    source.add_argument("--preset", default=None, choices=["tiny", "hunyuan-13b"],
                        help="random weights in a preset's shapes (default: tiny when --model is not given)")
    gen.add_argument("--num-frames", type=FRAMES, default=9, help=f"frames, of the form 4k+1, at most {MAX_FRAMES} (default 9)")
    gen.add_argument("--height", type=SIDE, default=64, help=f"pixels, a multiple of 16, at most {MAX_SIDE} (default 64)")
    gen.add_argument("--width", type=SIDE, default=64, help=f"pixels, a multiple of 16, at most {MAX_SIDE} (default 64)")
    gen.add_argument("--steps", type=STEPS, default=4,
                     help=f"denoising steps, 1..{MAX_STEPS} (default 4; the paper's 50 for quality)")
    gen.add_argument("--guidance", type=GUIDANCE, default=6.0,
                     help=f"embedded guidance scale, 0..{MAX_GUIDANCE:g} (default 6.0)")
    gen.add_argument("--true-cfg", type=number_in(1, MAX_GUIDANCE), default=1.0,
                     help="classifier-free guidance scale against --negative-prompt; >1 doubles the cost")
    gen.add_argument("--negative-prompt", default="", help="used only with --true-cfg > 1")
    gen.add_argument("--seed", type=SEED, default=0, help="random seed, 0..2**63-1 (default 0)")
    gen.add_argument("--fps", type=int_in(1, 240), default=24, help="frames per second of the mp4, 1..240 (default 24)")
    gen.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    gen.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                     help="model precision (default: bfloat16 on cuda, float32 on cpu)")
    gen.add_argument("--vae-tiling", action="store_true", help="decode in tiles to save memory at high resolution")
    gen.add_argument("--output", type=output_uri, required=True, help="the mp4 to write: a path or s3:// URI")
    gen.set_defaults(run=cmd_generate)

    train = sub.add_parser(
        "train", help="train PolyVivid from a PolyVividTraining manifest",
        description="Run the PolyVividTraining in SPEC (the manifest you would `kubectl apply`). Inside "
                    "torchrun (a PyTorchJob pod) it reads torchrun's environment; with --local --nproc N it starts "
                    "N processes on this machine, their rendezvous on 127.0.0.1 (Ctrl-C or SIGTERM: they "
                    "checkpoint and stop). A run resumes from its newest good checkpoint.",
        epilog="example: polyvivid train training.yaml --local --nproc 2 --output file:///tmp/run1",
    )
    train.add_argument("spec", help="PolyVividTraining YAML")
    train.add_argument("--local", action="store_true", help="launch torchrun here with --nproc processes")
    train.add_argument("--nproc", type=int_in(1, 64), default=1, help="processes for --local, 1..64 (default 1)")
    train.add_argument("--output", type=output_uri, help="where artifacts go (file:// path or s3://), overriding spec.output")
    train.add_argument("--store", metavar="ENDPOINT", help="S3 endpoint, overriding spec.storage.endpoint")
    train.add_argument("--dataset", help="dataset URI, overriding spec.dataset")
    train.add_argument("--metrics-addr", default="127.0.0.1",
                       help="address of rank 0's Prometheus endpoint (default 127.0.0.1; in a pod, 0.0.0.0 so that "
                            "Prometheus can scrape it: the operator passes that)")
    train.add_argument("--metrics-port", type=int_in(0, 65535), help="port of rank 0's Prometheus endpoint (0: off)")
    train.set_defaults(run=cmd_train)

    curate = sub.add_parser(
        "curate", help="turn raw videos into a multi-subject dataset (a CurationJob)",
        description="Run the CurationJob in SPEC on Ray: split into clips, filter, caption, ground each subject "
                    "phrase (Florence-2), segment it (SAM2), check it (CLIP) and consolidate (cliques); writes "
                    "clips, subject images, manifest.jsonl and summary.json. Finished videos are skipped on a re-run.",
        epilog="example: polyvivid curate curation.yaml --local",
    )
    curate.add_argument("spec", help="CurationJob YAML")
    curate.add_argument("--local", action="store_true", help="start Ray on this machine (default: spec.rayAddress or the cluster)")
    curate.add_argument("--input", help="video URI prefix, overriding spec.input")
    curate.add_argument("--output", type=output_uri, help="dataset URI, overriding spec.output")
    curate.add_argument("--store", metavar="ENDPOINT", help="S3 endpoint, overriding spec.storage.endpoint")
    _add_ray_auth_flag(curate)
    curate.set_defaults(run=cmd_curate)

    synth = sub.add_parser(
        "synth-data", help="write a synthetic multi-subject dataset",
        description="Write N clips of textured shapes moving and interacting, with captions naming them "
                    "and a reference image per subject, in the training dataset format (manifest.jsonl).",
    )
    synth.add_argument("--out", required=True, help="dataset URI: a path, file:// or s3://")
    synth.add_argument("--videos", type=int_in(1, 100_000), default=32, help="number of clips, 1..100000 (default 32)")
    synth.add_argument("--size", type=int_in(16, 1024), default=96, help="clip side in pixels, 16..1024 (default 96)")
    synth.add_argument("--frames", type=FRAMES, default=17,
                       help=f"frames per clip, 1..{MAX_FRAMES} (default 17)")
    synth.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    synth.set_defaults(run=cmd_synth_data)

    srv = sub.add_parser(
        "serve", help="serve a PolyVividService over HTTP (Ray Serve)",
        description="Run the PolyVividService in SPEC: an HTTP API (POST /v1/videos, GET /v1/videos/ID, "
                    "GET /v1/videos/ID/content, DELETE /v1/videos/ID, /healthz, /readyz, OpenAPI at /docs) in "
                    "front of generator replicas holding the model. --local starts Ray and Serve on 127.0.0.1 "
                    "and serves until Ctrl-C; --print-config prints the serveConfigV2 a RayService runs. "
                    "/v1 needs a bearer token: $POLYVIVID_API_TOKEN when set (required with "
                    "spec.apiTokenSecretRef), else one generated once into ~/.config/polyvivid/api-token "
                    "(which `polyvivid request` reads). --insecure-no-auth (or spec.allowUnauthenticated) runs "
                    "open.",
        epilog="example: polyvivid serve service.yaml --local --port 8000 --model out/run1/final",
    )
    srv.add_argument("spec", help="PolyVividService YAML")
    mode = srv.add_mutually_exclusive_group(required=True)
    mode.add_argument("--local", action="store_true", help="start Ray + Serve here, on 127.0.0.1")
    mode.add_argument("--print-config", action="store_true", help="print the Serve config (serveConfigV2) as YAML")
    srv.add_argument("--port", type=PORT, default=8000, help="HTTP port for --local (default 8000)")
    srv.add_argument("--model", metavar="DIR_OR_URI",
                     help="weights to serve, overriding spec.model (e.g. a training run's final/)")
    srv.add_argument("--output", type=output_uri, help="where job records and videos go, overriding spec.output")
    srv.add_argument("--store", metavar="ENDPOINT", help="S3 endpoint, overriding spec.storage.endpoint")
    srv.add_argument("--insecure-no-auth", action="store_true",
                     help="serve /v1 with no token: anyone who reaches the port can submit, read and cancel jobs")
    _add_ray_auth_flag(srv)
    srv.set_defaults(run=cmd_serve)

    req = sub.add_parser(
        "request", help="ask a PolyVivid server for a video and download it",
        description="POST a prompt and subject images to a PolyVivid server, follow the job with a progress "
                    "bar, and write the mp4. Settings left out take the service's defaults. A token, when the "
                    "service needs one, is read from the environment variable named by --token-env.",
        epilog="example: polyvivid request http://127.0.0.1:8000 --prompt 'A man plays the guitar' "
               "--subject man=man.png --subject guitar=guitar.png --output out/video.mp4",
    )
    req.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    _add_prompt_and_subjects(req)
    for flag, kind, what in (("--num-frames", FRAMES, "frames, 4k+1"), ("--height", SIDE, "pixels"),
                             ("--width", SIDE, "pixels"), ("--steps", STEPS, "denoising steps"),
                             ("--guidance", GUIDANCE, "guidance scale"), ("--seed", SEED, "random seed")):
        req.add_argument(flag, type=kind, help=f"{what} (default: the service's)")
    req.add_argument("--output", type=output_uri, required=True, help="the mp4 to write")
    req.add_argument("--token-env", default="POLYVIVID_API_TOKEN",
                     help="environment variable holding the token (default POLYVIVID_API_TOKEN; when unset, the "
                          "token `serve --local` generated, in ~/.config/polyvivid/api-token)")
    req.add_argument("--wait-ready", type=number_in(0, 86400), default=0, metavar="SECONDS",
                     help="first wait up to SECONDS for the server to be ready (default 0: don't wait)")
    req.add_argument("--timeout", type=number_in(1, 7 * 86400), default=3600, help="give up after SECONDS (default 3600)")
    req.set_defaults(run=cmd_request)

    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models",
                          description="Write one CRD YAML per resource kind (PolyVividTraining, CurationJob, "
                                      "PolyVividService) into DIR, generated from the pydantic models in polyvivid.api.")
    crds.add_argument("--out", required=True, metavar="DIR", help="directory to write into (e.g. manifests/crds)")
    crds.set_defaults(run=cmd_crds)

    render = sub.add_parser(
        "render", help="print the Kubernetes objects the operator would create for manifests",
        description="Print, as YAML, the children the operator creates for each PolyVividTraining (ConfigMap + "
                    "PyTorchJob), CurationJob (ConfigMap + RayJob) and PolyVividService (RayService) in FILE(s), "
                    "through the operator's own renderers and checks. A training's curationJob and a service's "
                    "training resolve against the other documents given. Other kinds are skipped.")
    render.add_argument("files", nargs="+", metavar="FILE", help="manifest YAML (several documents allowed)")
    render.add_argument("--image", default=None, help="workload image (default: the operator's default image)")
    render.add_argument("--namespace", "-n", default="default", help="namespace of documents that name none")
    render.add_argument("--max-gpus-per-node", type=int_in(0, 16), default=8, help="the largest node's GPUs (default 8)")
    render.set_defaults(run=cmd_render)

    ev = sub.add_parser(
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
    models.add_argument("--preset", choices=["tiny"], help="random tiny models for every metric")
    ev.set_defaults(run=cmd_eval)

    cases = sub.add_parser(
        "eval-cases", help="build an evaluation test set: subject pairs with interaction prompts",
        description="Write COUNT two-subject cases (as the paper's 100 pairs: human-object, human-animal, "
                    "human-human, animal-object, animal-animal) with an interaction prompt each, from a directory "
                    "of subject images SUBJECTS/{human,animal,object}/WORD.png, or from drawn sample subjects.")
    source = cases.add_mutually_exclusive_group(required=True)
    source.add_argument("--subjects", metavar="DIR", help="human/, animal/, object/ folders of WORD.png images")
    source.add_argument("--drawn", action="store_true",
                        help="draw sample subjects (man, tiger, dog, guitar) beside OUT and use them")
    cases.add_argument("--out", required=True, metavar="CASES.jsonl", help="where to write the cases")
    cases.add_argument("--count", type=int_in(1, 100_000), default=100, help="how many cases (default 100)")
    cases.add_argument("--seed", type=SEED, default=0, help="which pairs and prompts (default 0)")
    cases.set_defaults(run=cmd_eval_cases)

    samples = sub.add_parser("sample-subjects", help="write drawn sample subject images (for the demo)",
                             description="Write PNG drawings of a man, a guitar, a tiger and a dog to DIR.")
    samples.add_argument("--out", required=True, help="directory to write WORD.png files into")
    samples.set_defaults(run=cmd_sample_subjects)
    return parser


def _load_subject_images(subjects: list[tuple[str, str]]):
    from .images import ImageRejected, read_image

    loaded = []
    for word, path in subjects:
        try:
            loaded.append((word, read_image(_existing_subject_file(word, path))[0]))
        except ImageRejected as e:
            raise UsageError(f"subject {word!r}: {path}: {e}") from None
    return loaded


def cmd_generate(args) -> int:
    from .model.presets import get_preset
    from .model.request import InvalidRequest, validate_request

    words = [w for w, _ in args.subject]
    if len(set(w.lower() for w in words)) != len(words):
        raise UsageError("subject: each WORD may be given once")
    preset = args.preset or (None if args.model else "tiny")
    max_subjects = get_preset(preset).transformer["max_subjects"] if preset else 1_000
    try:  # check what can be checked before loading a model
        validate_request(args.prompt, words, args.num_frames, args.height, args.width, max_subjects)
    except InvalidRequest as e:
        raise UsageError(str(e)) from None
    subjects = _load_subject_images(args.subject)

    import torch

    from .model.pipeline import PolyVividPipeline, load_pipeline
    from .storage import StorageError, open_store, split_uri
    from .video import contact_sheet, encode_mp4, png_bytes

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    try:
        pipe = PolyVividPipeline.from_preset(preset) if preset else load_pipeline(args.model, torch_dtype=dtype)
    except (OSError, StorageError, ValueError) as e:  # missing, unreachable, damaged (DamagedModel)
        raise UsageError(f"model: {e}") from None
    pipe.to(device=device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    try:
        frames = pipe(args.prompt, subjects, num_frames=args.num_frames, height=args.height, width=args.width,
                      num_inference_steps=args.steps, guidance_scale=args.guidance, true_cfg_scale=args.true_cfg,
                      negative_prompt=args.negative_prompt,
                      generator=torch.Generator().manual_seed(args.seed))
    except InvalidRequest as e:
        raise UsageError(str(e)) from None

    directory, name = split_uri(args.output)
    stem = name[:-4] if name.endswith(".mp4") else name
    try:
        store = open_store(directory)
        store.write_bytes(name, encode_mp4(frames, fps=args.fps))
        store.write_bytes(f"{stem}_frames.png", png_bytes(contact_sheet(frames)))
    except StorageError as e:
        raise UsageError(f"output: {e}") from None
    print(f"video: {store.uri(name)} ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]})")
    print(f"frames: {store.uri(stem + '_frames.png')}")
    return 0


def _load_spec(args, kind, **updates):
    """The manifest's spec with the command-line overrides applied (`--store` for every kind), and the
    artifact store pointed at its S3 endpoint. Bad manifests exit 2 naming the field."""
    from .api import SpecError, load_resource

    try:
        spec = load_resource(args.spec, kind).spec
    except SpecError as e:
        raise UsageError(f"{args.spec}: {e}") from None
    if args.store:
        updates["storage"] = spec.storage.model_copy(update={"endpoint": args.store})
    spec = spec.model_copy(update=updates)
    try:
        output_uri(spec.output)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"{args.spec}: spec.output: {e}") from None
    os.environ.update(spec.storage.environment())
    return spec


def _load_training(args):
    from .api import PolyVividTraining

    updates = {"metrics_port": args.metrics_port} if args.metrics_port is not None else {}
    spec = _load_spec(args, PolyVividTraining, **updates)
    if args.dataset:
        spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(
            update={"uri": args.dataset, "curation_job": None})})
    if spec.dataset.uri is None:
        raise UsageError(f"{args.spec}: spec.dataset names CurationJob {spec.dataset.curation_job!r}; outside the "
                         "cluster give its output with --dataset URI")
    return spec


def cmd_train(args) -> int:
    if args.nproc > 1 and not args.local:
        raise UsageError("--nproc N needs --local (under torchrun, torchrun sets the processes)")
    spec = _load_training(args)
    if args.local and args.nproc > 1:
        from .train.launcher import launch

        return launch([args.spec, *_forwarded(args)], args.nproc)
    from .data.loader import SampleError
    from .storage import StorageError
    from .train.trainer import TrainingError, train

    try:
        return train(spec, args.output, args.metrics_addr)
    except (TrainingError, SampleError, StorageError) as e:
        raise UsageError(str(e)) from None


def _forwarded(args) -> list[str]:
    """The options a --local launch passes on to each torchrun worker."""
    extra = []
    for flag, value in (("--output", args.output), ("--store", args.store), ("--dataset", args.dataset),
                        ("--metrics-addr", args.metrics_addr), ("--metrics-port", args.metrics_port)):
        if value is not None:
            extra += [flag, str(value)]
    return extra


def cmd_curate(args) -> int:
    from .api import CurationJob

    spec = _load_spec(args, CurationJob, **{k: v for k, v in (("input", args.input), ("output", args.output)) if v})
    from .data.curation import curate
    from .storage import StorageError

    from .ray_local import RayAuthOff

    try:
        summary = curate(spec, local=args.local, allow_ray_no_auth=args.insecure_ray_no_auth)
    except (StorageError, RayAuthOff) as e:
        raise UsageError(str(e)) from None
    for stage, c in summary["stages"].items():
        print(f"{stage:12s} in {c['in']:5d}  out {c['out']:5d}  rejected {c['rejected']}")
    print(f"dataset: {spec.output.rstrip('/')}/manifest.jsonl ({summary['clips_written']} clips; "
          f"summary.json lists {len(summary['rejects'])} rejects with reasons)")
    return 0


def cmd_synth_data(args) -> int:
    from .data.synthetic import write_synthetic_dataset
    from .storage import StorageError, open_store

    from tqdm import tqdm

    try:
        store = open_store(args.out)
        with tqdm(total=args.videos, desc="clips", unit="clip") as bar:
            write_synthetic_dataset(store, args.videos, seed=args.seed, size=args.size, frames=args.frames,
                                    progress=bar)
    except StorageError as e:
        raise UsageError(f"out: {e}") from None
    print(f"dataset: {store.uri('manifest.jsonl')} ({args.videos} clips)")
    return 0


def cmd_serve(args) -> int:
    from .api import PolyVividService
    from .serve.config import serve_config_v2

    def absolute(ref):  # Ray replicas do not share this process's working directory
        return ref if ref is None or "://" in ref or ref in ("tiny", "hunyuan-13b") else os.path.abspath(ref)

    updates = {"output": absolute(args.output)} if args.output else {}
    spec = _load_spec(args, PolyVividService, **updates)
    if "://" not in spec.output:
        spec = spec.model_copy(update={"output": absolute(spec.output)})
    args.model = absolute(args.model) or absolute(spec.model.uri)
    if args.model is None and spec.model.training is not None:
        raise UsageError(f"{args.spec}: spec.model names PolyVividTraining {spec.model.training!r}; outside the "
                         "cluster give its final/ with --model URI")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(serve_config_v2(spec, args.model), sort_keys=False), end="")
        return 0
    from .ray_local import RayAuthOff, check_auth
    from .serve.local import serve_local

    try:
        check_auth(args.insecure_ray_no_auth)  # before anything is written or started
        spec = _local_api_auth(args, spec)
        serve_local(spec, args.model, args.port, on_ready=lambda line: print(line, flush=True),
                    allow_ray_no_auth=args.insecure_ray_no_auth)
    except RayAuthOff as e:
        raise UsageError(str(e)) from None
    return 0


def _local_api_auth(args, spec):
    """The token `serve --local` requires ($POLYVIVID_API_TOKEN, or one generated into a 0600 file), or
    none when told to run open; the replicas read it from the environment, as in the cluster."""
    from .serve.config import TOKEN_ENV, local_token, local_token_file

    if args.insecure_no_auth:
        if spec.api_token_secret_ref is not None:
            raise UsageError(f"{args.spec}: spec.apiTokenSecretRef and --insecure-no-auth contradict each other")
        spec = spec.model_copy(update={"allow_unauthenticated": True})
    if spec.allow_unauthenticated:
        os.environ.pop(TOKEN_ENV, None)
        print("polyvivid: warning: the HTTP API runs without authentication: anyone who reaches the port can "
              "submit, read and cancel jobs", file=sys.stderr, flush=True)
    elif os.environ.get(TOKEN_ENV):
        print(f"API token: from ${TOKEN_ENV}", flush=True)
    elif spec.api_token_secret_ref is not None:
        raise UsageError(f"{args.spec}: spec.apiTokenSecretRef names Secret {spec.api_token_secret_ref.name!r}; "
                         f"locally put the token in ${TOKEN_ENV}")
    else:
        os.environ[TOKEN_ENV] = local_token()
        print(f"API token: in {local_token_file()} (readable by you only); `polyvivid request` reads it from "
              f"there, other clients send it as 'Authorization: Bearer TOKEN' "
              f"(export {TOKEN_ENV}=$(cat {local_token_file()}))", flush=True)
    return spec


def cmd_request(args) -> int:
    from .serve.client import ApiError, Client

    from .serve.config import read_local_token

    images = {word: Path(_existing_subject_file(word, path)).read_bytes() for word, path in args.subject}
    client = Client(args.url, token=os.environ.get(args.token_env) or read_local_token())
    from tqdm import tqdm

    try:
        if args.wait_ready:
            client.wait_ready(args.wait_ready)
        job = client.submit(args.prompt, images, num_frames=args.num_frames, height=args.height,
                            width=args.width, steps=args.steps, guidance=args.guidance, seed=args.seed)
        print(f"job {job['id']} queued")
        with tqdm(total=100, desc="generating", unit="%") as bar:
            def show(status):
                bar.set_postfix_str(status["status"])
                bar.update(round(100 * status["progress"]) - bar.n)

            final = client.wait(job["id"], timeout_s=args.timeout, on_progress=show)
        if final["status"] != "succeeded":
            raise UsageError(f"job {job['id']} {final['status']}: {final.get('error') or ''}".rstrip(": "))
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_bytes(client.download(job["id"]))
    except ApiError as e:
        raise UsageError(f"{args.url}: {e}") from None
    except (OSError, TimeoutError) as e:
        raise UsageError(f"{args.url}: {e}") from None
    print(f"video: {args.output}")
    return 0


def cmd_crds(args) -> int:
    import yaml

    from .api.crds import all_crds

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, crd in all_crds().items():
        (out / name).write_text("# Generated by `polyvivid crds` from polyvivid/api; do not edit.\n"
                                + yaml.safe_dump(crd, sort_keys=False))
        print(out / name)
    return 0


def cmd_render(args) -> int:
    import yaml
    from polyvivid_operator.children.common import DEFAULT_IMAGE
    from polyvivid_operator.render import render
    from polyvivid_operator.validation import InvalidSpec

    from .api import SpecError
    from .api.common import read_manifest_documents

    docs = []
    for name in args.files:
        try:
            docs += [d for d in read_manifest_documents(name) if isinstance(d, dict)]
        except SpecError as e:
            raise UsageError(f"{name}: {e}") from None
    try:
        children = render(docs, args.image or DEFAULT_IMAGE, args.max_gpus_per_node, args.namespace)
    except InvalidSpec as e:
        raise UsageError(str(e)) from None
    if not children:
        raise UsageError("no PolyVividTraining, CurationJob or PolyVividService in the files given")
    print(yaml.safe_dump_all(children, sort_keys=False), end="")
    return 0


def cmd_sample_subjects(args) -> int:
    from .samples import SAMPLES, draw_subject

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for word in SAMPLES:
        draw_subject(word).save(out / f"{word}.png")
        print(out / f"{word}.png")
    return 0


def cmd_eval(args) -> int:
    import json

    from .eval.cases import InvalidCases, read_cases
    from .eval.runner import METRICS, EvalModels, MissingModel, evaluate, format_table, read_videos
    from .storage import StorageError

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
    from .eval.generate import GenerationSettings, generate_case_videos, load_generator
    from .model.presets import PRESETS
    from .model.request import InvalidRequest
    from .storage import StorageError

    try:
        pipe = load_generator(args.model, base=args.base_model)
    except (FileNotFoundError, OSError, StorageError, ValueError) as e:
        known = f" (or a preset: {', '.join(PRESETS)})" if "://" not in args.model else ""
        raise UsageError(f"--model: {e}{known}") from None
    settings = GenerationSettings(num_frames=args.num_frames, height=args.height, width=args.width, steps=args.steps,
                                  guidance=args.guidance)
    try:
        made = generate_case_videos(pipe, cases, args.videos, settings)
    except InvalidRequest as e:
        raise UsageError(f"generation: {e}") from None
    print(f"generated {len(made)} videos into {args.videos} ({len(cases) - len(made)} were there already)")


def cmd_eval_cases(args) -> int:
    from .eval.cases import InvalidCases, build_cases, subject_library, write_cases

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.drawn:
        from .samples import draw_subject

        root = out.parent / "subjects"
        for kind, words in (("human", ["man"]), ("animal", ["tiger", "dog"]), ("object", ["guitar"])):
            (root / kind).mkdir(parents=True, exist_ok=True)
            for word in words:
                draw_subject(word).save(root / kind / f"{word}.png")
    else:
        root = Path(args.subjects)
        if not root.is_dir():
            raise UsageError(f"--subjects: not a directory: {root}")
    try:
        library = subject_library(root)
        # image paths relative to the cases file, so the set moves as one directory
        cases = build_cases(library, count=args.count, seed=args.seed,
                            image_prefix=f"{os.path.relpath(root, out.parent)}/")
    except InvalidCases as e:
        raise UsageError(str(e)) from None
    write_cases(cases, out)
    kinds = {}
    for case in cases:
        key = "-".join(s.kind for s in case.subjects)
        kinds[key] = kinds.get(key, 0) + 1
    print(f"wrote {len(cases)} cases to {out} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "run", None):
            parser.print_help()
            return EXIT_USAGE
        return args.run(args)
    except UsageError as e:
        print(f"polyvivid: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("polyvivid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
