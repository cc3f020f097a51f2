"""tessera: fast, byte-exact reading of whole-slide images (tiled pyramidal TIFF).

cuCIM's reading API with only the import changed::

    from tessera import CuImage
    img = CuImage("slide.svs")
    region = img.read_region((1000, 2000), (512, 512), level=0)   # np.asarray(region): (512, 512, 3)
    for batch in img.read_region(locations, (224, 224), batch_size=32, num_workers=8):
        ...                                                        # (32, 224, 224, 3) each

Arrays share their memory with NumPy (np.asarray), PyTorch (torch.from_dlpack) and anything
taking the buffer protocol, and stay valid while referenced. cuCIM's other names are under
the same relative paths (tessera.clara.DLDataType, tessera.clara.cache...); tessera.Slide is
the same reader with tessera's own defaults (docs/cucim-compat.md). tessera.torch has an
IterableDataset; tessera.dask turns slides into dask arrays.
"""

from ._tessera import Array, BatchIter, TesseraError, library_version
from ._image import (Cache, CuImage, Region, Slide, SlideNotFoundError, remove_shared_cache,
                     shared_caches)
from ._tissue import Grid, TissueMask, grid
from . import clara

__version__ = library_version

__all__ = [
    "Array",
    "BatchIter",
    "Cache",
    "CuImage",
    "Region",
    "Slide",
    "SlideNotFoundError",
    "TesseraError",
    "TissueMask",
    "Grid",
    "grid",
    "clara",
    "remove_shared_cache",
    "shared_caches",
]
