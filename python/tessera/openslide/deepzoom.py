"""Deep Zoom tiles and .dzi metadata of a slide, as openslide-python's
``openslide.deepzoom`` makes them (the same levels, tile geometry and pixels for the same
slide levels).

Deep Zoom level n has the slide's level-0 size halved (rounding up) until 1 x 1, counted
from the smallest; each of its tiles is read from the slide level best suited to that
downsample, laid on the slide's background colour and shrunk with Lanczos filtering when the
slide level is larger than the tile.
"""

import math
from io import BytesIO
from xml.etree.ElementTree import Element, ElementTree, SubElement

from PIL import Image

from . import (PROPERTY_NAME_BACKGROUND_COLOR, PROPERTY_NAME_BOUNDS_HEIGHT,
               PROPERTY_NAME_BOUNDS_WIDTH, PROPERTY_NAME_BOUNDS_X, PROPERTY_NAME_BOUNDS_Y)

DZI_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"


class DeepZoomGenerator:
    """DeepZoomGenerator(slide, tile_size=254, overlap=1, limit_bounds=False): Deep Zoom
    tiles of an OpenSlide or ImageSlide. overlap pixels are added on each side of a tile
    that has a neighbour there; limit_bounds keeps to the slide's non-empty area (its
    openslide.bounds-* properties)."""

    BOUNDS_OFFSET_PROPS = (PROPERTY_NAME_BOUNDS_X, PROPERTY_NAME_BOUNDS_Y)
    BOUNDS_SIZE_PROPS = (PROPERTY_NAME_BOUNDS_WIDTH, PROPERTY_NAME_BOUNDS_HEIGHT)

    def __init__(self, osr, tile_size=254, overlap=1, limit_bounds=False):
        self._osr = osr
        self._tile = tile_size
        self._overlap = overlap
        self._limit_bounds = limit_bounds
        props = osr.properties
        if limit_bounds:
            self._offset = tuple(int(props.get(k, 0)) for k in self.BOUNDS_OFFSET_PROPS)
            # the share of level 0 inside the bounds, per axis, applied to every level
            scale = tuple(int(props.get(k, full)) / full
                          for k, full in zip(self.BOUNDS_SIZE_PROPS, osr.dimensions))
            self._slide_dims = tuple(
                tuple(int(math.ceil(n * s)) for n, s in zip(dims, scale))
                for dims in osr.level_dimensions)
        else:
            self._offset = (0, 0)
            self._slide_dims = osr.level_dimensions

        sizes = [self._slide_dims[0]]
        while sizes[-1][0] > 1 or sizes[-1][1] > 1:
            sizes.append(tuple(max(1, int(math.ceil(n / 2))) for n in sizes[-1]))
        self._dz_dims = tuple(reversed(sizes))
        self._dz_tiles = tuple(tuple(int(math.ceil(n / tile_size)) for n in dims)
                               for dims in self._dz_dims)
        count = len(self._dz_dims)
        # level 0 pixels per Deep Zoom pixel, the slide level read for it, and slide level
        # pixels per Deep Zoom pixel
        l0_per_dz = tuple(2 ** (count - n - 1) for n in range(count))
        self._slide_level = tuple(osr.get_best_level_for_downsample(d) for d in l0_per_dz)
        self._slide_ds = osr.level_downsamples
        self._level_per_dz = tuple(l0_per_dz[n] / self._slide_ds[self._slide_level[n]]
                                   for n in range(count))
        self._bg = "#" + props.get(PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
        profile = osr.color_profile
        self._icc = profile.tobytes() if profile is not None else None

    def __repr__(self):
        return "%s(%r, tile_size=%r, overlap=%r, limit_bounds=%r)" % (
            self.__class__.__name__, self._osr, self._tile, self._overlap,
            self._limit_bounds)

    @property
    def level_count(self):
        """The number of Deep Zoom levels."""
        return len(self._dz_dims)

    @property
    def level_tiles(self):
        """(columns, rows) of tiles of each Deep Zoom level."""
        return self._dz_tiles

    @property
    def level_dimensions(self):
        """(width, height) in pixels of each Deep Zoom level."""
        return self._dz_dims

    @property
    def tile_count(self):
        """The number of tiles of all levels together."""
        return sum(cols * rows for cols, rows in self._dz_tiles)

    def get_tile(self, level, address):
        """The RGB PIL.Image of the tile at address=(column, row) of Deep Zoom `level`."""
        (location, slide_level, size), tile_size = self._tile_info(level, address)
        region = self._osr.read_region(location, slide_level, size)
        tile = Image.composite(region, Image.new("RGB", region.size, self._bg), region)
        if tile.size != tile_size:
            tile.thumbnail(tile_size, getattr(Image, "Resampling", Image).LANCZOS)
        if self._icc is not None:
            tile.info["icc_profile"] = self._icc
        return tile

    def get_tile_coordinates(self, level, address):
        """The read_region arguments ((x, y), slide level, (width, height)) of a tile."""
        return self._tile_info(level, address)[0]

    def get_tile_dimensions(self, level, address):
        """(width, height) of a tile."""
        return self._tile_info(level, address)[1]

    def _tile_info(self, level, address):
        if not 0 <= level < len(self._dz_dims):
            raise ValueError("Invalid level")
        tiles = self._dz_tiles[level]
        if any(not 0 <= t < n for t, n in zip(address, tiles)):
            raise ValueError("Invalid address")
        slide_level = self._slide_level[level]
        scale = self._level_per_dz[level]
        before = tuple(self._overlap if t != 0 else 0 for t in address)
        after = tuple(self._overlap if t != n - 1 else 0 for t, n in zip(address, tiles))
        tile_size = tuple(min(self._tile, full - self._tile * t) + b + a
                          for t, full, b, a in zip(address, self._dz_dims[level], before,
                                                   after))
        # top-left in slide level pixels (fractional), then in level 0 rounded down
        start = [scale * (self._tile * t - b) for t, b in zip(address, before)]
        location = tuple(int(self._slide_ds[slide_level] * s + off)
                         for s, off in zip(start, self._offset))
        size = tuple(int(min(math.ceil(scale * n), full - math.ceil(s)))
                     for s, n, full in zip(start, tile_size, self._slide_dims[slide_level]))
        return (location, slide_level, size), tile_size

    def get_dzi(self, format):
        """The .dzi XML of the image, for tiles in `format` ('jpeg' or 'png')."""
        image = Element("Image", TileSize=str(self._tile), Overlap=str(self._overlap),
                        Format=format, xmlns=DZI_NAMESPACE)
        width, height = self._slide_dims[0]
        SubElement(image, "Size", Width=str(width), Height=str(height))
        out = BytesIO()
        ElementTree(image).write(out, encoding="UTF-8")
        return out.getvalue().decode("UTF-8")
