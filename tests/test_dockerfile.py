"""The Dockerfile (no docker here): every base image pinned to an exact version, both shipped targets
run as the non-root user, no hub access, the torch build overridable, the operator image without torch."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stages() -> dict[str, list[str]]:
    """stage name -> its instruction lines (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I):
            current = m.group(2) or m.group(1)
            out[current] = [line]
        elif current:
            out[current].append(line)
    return out


def test_base_images_are_pinned_to_exact_versions():
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    names = set(stages())
    for lines in stages().values():
        image = lines[0].split()[1]
        if image in names:
            continue  # built on another stage
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag) or "@sha256:" in image, image


def test_shipped_targets_run_as_non_root_without_hub_access():
    all_stages = stages()
    for target in ("operator", "runtime"):
        users = [line.split()[1] for line in all_stages[target] if line.upper().startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("0", "root"), target
    base = " ".join(all_stages["base"])
    assert "HF_HUB_OFFLINE=1" in base and "useradd --uid 1000" in base


def test_torch_is_overridable_and_only_in_the_runtime_image():
    all_stages = stages()
    runtime = " ".join(all_stages["runtime"])
    assert "ARG TORCH_SPEC=torch==" in runtime and '"${TORCH_SPEC}"' in runtime
    assert "torch" not in " ".join(all_stages["operator"]).lower()
    assert "[model,curation,serve]" in runtime


def test_the_runtime_image_has_what_kuberays_probes_run():
    """KubeRay (1.5+, Ray >= 2.53) probes Ray pods over HTTP, except a RayService worker's readiness, which
    is `bash -c "wget --tries 1 -T N -q -O- http://localhost:PORT/PATH | grep success && ..."` (the raylet
    and the Serve proxy): the runtime image must have wget (bash and grep come with Debian)."""
    runtime = " ".join(stages()["runtime"])
    assert re.search(r"apt-get install -y --no-install-recommends [^&]*\bwget\b", runtime)
    assert "slim-bookworm" in (ROOT / "Dockerfile").read_text()  # Debian: bash and grep are essential packages
