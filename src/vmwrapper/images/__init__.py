"""Guest images: build (from Debian packages), cache, and qemu-img's info/convert/compact.

Public API (docs/guest-image.md#code)::

    ensure_image(recipe: ImageRecipe = ImageRecipe()) -> Path   # cached build
    ImageRecipe(extra_files=(), debs=(), fmt="vdi")              # ExtraFile.parse("SRC:DEST")
    build_image(recipe, out, store=deb_store()) -> BuildReport   # uncached build to a path
    info(path) / convert(src, dst, fmt) / compact(src, dst, fmt) # qemu-img
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vmwrapper.images.builder import BuildReport, build_image
    from vmwrapper.images.cache import (
        DEFAULT_RECIPE,
        cache_dir,
        deb_store,
        ensure_image,
        ensure_image_report,
        image_path,
    )
    from vmwrapper.images.qemu_img import ImageInfo, compact, convert, info
    from vmwrapper.images.recipe import ExtraFile, ImageFormat, ImageRecipe

#: Where each public name lives. They are imported on first use, not with the package: the
#: wrapper's QEMU back end needs only ``qemu_img``, and the image builder's modules (tar, xz,
#: bzip2, gzip readers for Debian packages) would cost every wrapper start ~15 ms
#: (docs/performance.md#the-fixed-cost-around-a-short-job).
_HOMES = {
    "BuildReport": "builder",
    "build_image": "builder",
    "DEFAULT_RECIPE": "cache",
    "cache_dir": "cache",
    "deb_store": "cache",
    "ensure_image": "cache",
    "ensure_image_report": "cache",
    "image_path": "cache",
    "ImageInfo": "qemu_img",
    "compact": "qemu_img",
    "convert": "qemu_img",
    "info": "qemu_img",
    "ExtraFile": "recipe",
    "ImageFormat": "recipe",
    "ImageRecipe": "recipe",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "DEFAULT_RECIPE",
    "BuildReport",
    "ExtraFile",
    "ImageFormat",
    "ImageInfo",
    "ImageRecipe",
    "build_image",
    "cache_dir",
    "compact",
    "convert",
    "deb_store",
    "ensure_image",
    "ensure_image_report",
    "image_path",
    "info",
]
