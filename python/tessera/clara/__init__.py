"""tessera.clara: cuCIM's cucim.clara names (CuImage, DLDataType, DLDataTypeCode, cache), so
that code written for cuCIM changes only its top package name (cucim -> tessera)."""

from .._cucim import DLDataType, DLDataTypeCode
from .._image import CuImage
from . import cache

__all__ = ["CuImage", "DLDataType", "DLDataTypeCode", "cache"]
