"""`polyvivid generate`: a video from a prompt and subject images, on this machine."""

from __future__ import annotations

import argparse

from ..api.common import MAX_FRAMES, MAX_GUIDANCE, MAX_SIDE, MAX_STEPS
from ..model.options import PRESET_NAMES, SMOKE_PRESET
from .options import (FRAMES, GUIDANCE, SEED, SIDE, STEPS, UsageError, add_prompt_and_subjects,
                      existing_subject_file, int_in, number_in, output_uri)


def register(subparsers) -> None:
    gen = subparsers.add_parser(
        "generate", help="make a video from a prompt and subject images",
        description="Generate a video in which every subject keeps the identity of its image and the "
                    "subjects interact as the prompt says. Writes OUTPUT (mp4) and a PNG contact sheet "
                    "of its frames beside it (OUTPUT with _frames.png). Same seed, same video.",
        epilog="example: polyvivid generate --preset tiny --prompt 'A man plays the guitar' "
               "--subject man=man.png --subject guitar=guitar.png --output out/video.mp4",
    )
    add_prompt_and_subjects(gen)
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR_OR_URI",
                        help="a checkpoint directory or s3:// URI (save_pretrained layout, or a training "
                             "run's final/ with PolyVivid weights)")
    source.add_argument("--preset", default=None, choices=PRESET_NAMES,
                        help=f"random weights in a preset's shapes (default: {SMOKE_PRESET} when --model is not "
                             "given)")
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
    gen.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=True,
                     help="decode in tiles to save memory at high resolution (default on)")
    gen.add_argument("--offload-encoders", action=argparse.BooleanOptionalAction, default=True,
                     help="keep LLaVA and CLIP in host memory except while encoding (default on; GPU only)")
    gen.add_argument("--output", type=output_uri, required=True, help="the mp4 to write: a path or s3:// URI")
    gen.set_defaults(run=run)


def _load_subject_images(subjects: list[tuple[str, str]]):
    from ..images import ImageRejected, read_image

    loaded = []
    for word, path in subjects:
        try:
            loaded.append((word, read_image(existing_subject_file(word, path))[0]))
        except ImageRejected as e:
            raise UsageError(f"subject {word!r}: {path}: {e}") from None
    return loaded


def run(args) -> int:
    from ..model.presets import get_preset
    from ..model.request import InvalidRequest, validate_request

    words = [w for w, _ in args.subject]
    if len(set(w.lower() for w in words)) != len(words):
        raise UsageError("subject: each WORD may be given once")
    preset = args.preset or (None if args.model else SMOKE_PRESET)
    max_subjects = get_preset(preset).transformer["max_subjects"] if preset else 1_000
    try:  # check what can be checked before loading a model
        validate_request(args.prompt, words, args.num_frames, args.height, args.width, max_subjects)
    except InvalidRequest as e:
        raise UsageError(str(e)) from None
    subjects = _load_subject_images(args.subject)

    import torch

    from ..model.pipeline import PolyVividPipeline, load_pipeline
    from ..storage import StorageError, open_store, split_uri
    from ..video import contact_sheet, encode_mp4, png_bytes

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    try:
        pipe = PolyVividPipeline.from_preset(preset) if preset else load_pipeline(args.model, torch_dtype=dtype)
    except (OSError, StorageError, ValueError) as e:  # missing, unreachable, damaged (DamagedModel)
        raise UsageError(f"model: {e}") from None
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.place(device, vae_tiling=args.vae_tiling, offload_encoders=args.offload_encoders)
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
