"""The one place that names the project's images: `make images` tags what it builds with `image_ref(kind,
<git sha>)`, the pipeline config's defaults are `image_ref(kind)` (the release tag), and
`protege compile --images TAG` rewrites the compiled pipeline to `image_ref(kind, TAG)`.

No imports beyond the standard library: config.py reads this module at import time.
"""

from __future__ import annotations

REGISTRY = "ghcr.io/protege-ai"
"""Where cluster images live (and the prefix of locally built tags, so a `docker push` needs no retag)."""
RELEASE_TAG = "0.1.0"
"""Tag the committed pipeline YAML names; `make images` and `protege compile --images` use the git SHA."""
IMAGE_NAMES = {"agent": "protege-agent", "trainer": "protege-trainer"}
"""Kind -> repository name; the Dockerfile of kind K is images/K.Dockerfile."""


def image_ref(kind: str, tag: str = RELEASE_TAG, registry: str = REGISTRY) -> str:
    """`<registry>/<name>:<tag>` of image `kind` ('agent' or 'trainer'); ValueError naming a bad kind."""
    if kind not in IMAGE_NAMES:
        raise ValueError(f"unknown image kind '{kind}' (known: {', '.join(IMAGE_NAMES)})")
    return f"{registry.rstrip('/')}/{IMAGE_NAMES[kind]}:{tag}"


def image_digest(ref: str) -> str:
    """The `sha256:<hex>` digest a reference is pinned to (`name@sha256:...`), or '' for a tag reference,
    whose content a registry may change under the same name."""
    _, at, digest = ref.partition("@")
    return digest if at and digest.startswith("sha256:") else ""


def recorded_images(refs: dict[str, str]) -> dict[str, str]:
    """What lineage records of each image: its digest when the reference is pinned to one, else the
    reference itself (a tag: the best that is known without asking the registry)."""
    return {kind: image_digest(ref) or ref for kind, ref in refs.items()}
