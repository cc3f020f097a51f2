"""tessera.clara.cache: cuCIM's cucim.clara.cache names."""

from .._cucim import CacheType, preferred_memory_capacity
from .._image import Cache as ImageCache

__all__ = ["CacheType", "ImageCache", "preferred_memory_capacity"]
