"""The image cache: one built image per recipe key, under ``$VMWRAPPER_CACHE`` (default
``~/.cache/vmwrapper``). Parallel callers (two test sessions) build once, behind a lock."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vmwrapper.images.builder import BuildReport, build_image, resolve_inputs
from vmwrapper.images.debs import DebStore, locked
from vmwrapper.images.recipe import ImageRecipe, cache_key

log = logging.getLogger(__name__)

DEFAULT_RECIPE = ImageRecipe()


def cache_dir() -> Path:
    configured = os.environ.get("VMWRAPPER_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "vmwrapper"


def deb_store(cache: Path | None = None) -> DebStore:
    return DebStore((cache or cache_dir()) / "debs")


def image_path(recipe: ImageRecipe = DEFAULT_RECIPE, cache: Path | None = None) -> Path:
    """Where the image for ``recipe`` is (or would be) cached; resolves inputs, no build."""
    cache = cache or cache_dir()
    resolved = resolve_inputs(recipe, deb_store(cache))
    key = cache_key(recipe, resolved.inputs)
    return cache / "images" / f"vmwrapper-guest-{key}.{recipe.suffix}"


def ensure_image(recipe: ImageRecipe = DEFAULT_RECIPE, *, cache: Path | None = None) -> Path:
    """The image for ``recipe``: from the cache, or built now (a minute, mostly the download
    and unpacking of the kernel package) and cached."""
    return ensure_image_report(recipe, cache=cache)[0]


def ensure_image_report(
    recipe: ImageRecipe = DEFAULT_RECIPE, *, cache: Path | None = None
) -> tuple[Path, BuildReport | None]:
    """As :func:`ensure_image`, plus the build report when it was built now (else None)."""
    cache = cache or cache_dir()
    store = deb_store(cache)
    resolved = resolve_inputs(recipe, store)
    key = cache_key(recipe, resolved.inputs)
    path = cache / "images" / f"vmwrapper-guest-{key}.{recipe.suffix}"
    if path.is_file():
        return path, None
    with locked(cache / "images" / f".{key}.lock"):
        if path.is_file():  # built by someone else while we waited
            return path, None
        log.info("building guest image %s", path.name, extra={"event": "image_build", "key": key})
        report = build_image(recipe, path, store=store, resolved=resolved)
    return path, report
