"""Guest images: build (from Debian packages), cache, and qemu-img's info/convert/compact.

Public API (docs/guest-image.md#code)::

    ensure_image(recipe: ImageRecipe = ImageRecipe()) -> Path   # cached build
    ImageRecipe(extra_files=(), debs=(), fmt="vdi")              # ExtraFile.parse("SRC:DEST")
    build_image(recipe, out, store=deb_store()) -> BuildReport   # uncached build to a path
    info(path) / convert(src, dst, fmt) / compact(src, dst, fmt) # qemu-img
"""

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
