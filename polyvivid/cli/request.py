"""`polyvivid request`: ask a PolyVivid server (`polyvivid serve`, a PolyVividService) for a video."""

from __future__ import annotations

import os
from pathlib import Path

from .options import (FRAMES, GUIDANCE, SEED, SIDE, STEPS, UsageError, add_prompt_and_subjects,
                      existing_subject_file, number_in, output_uri)


def register(subparsers) -> None:
    req = subparsers.add_parser(
        "request", help="ask a PolyVivid server for a video and download it",
        description="POST a prompt and subject images to a PolyVivid server, follow the job with a progress "
                    "bar, and write the mp4. Settings left out take the service's defaults. A token, when the "
                    "service needs one, is read from the environment variable named by --token-env.",
        epilog="example: polyvivid request http://127.0.0.1:8000 --prompt 'A man plays the guitar' "
               "--subject man=man.png --subject guitar=guitar.png --output out/video.mp4",
    )
    req.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    add_prompt_and_subjects(req)
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
    req.set_defaults(run=run)


def run(args) -> int:
    from ..serve.client import ApiError, Client
    from ..serve.config import read_local_token

    images = {word: Path(existing_subject_file(word, path)).read_bytes() for word, path in args.subject}
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
                bar.update(status["progress"] - bar.n)  # percent

            final = client.wait(job["id"], timeout_s=args.timeout, on_progress=show)
        if final["status"] != "completed":
            why = (final.get("error") or {}).get("message") or ""
            raise UsageError(f"job {job['id']} {final['status']}: {why}".rstrip(": "))
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_bytes(client.download(job["id"]))
    except ApiError as e:
        raise UsageError(f"{args.url}: {e}") from None
    except (OSError, TimeoutError) as e:
        raise UsageError(f"{args.url}: {e}") from None
    print(f"video: {args.output}")
    return 0
