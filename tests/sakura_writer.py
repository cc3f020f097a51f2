"""Writes small Sakura SVSlide (.svslide) slides at test time with Python's sqlite3 and Pillow,
laid out as OpenSlide 3.4.1's Sakura reader expects them (read for the schema, not copied):

  DataManagerSQLiteConfigXPO(TableName)     names the "unique table"
  <unique table>(id, data)                  ++MagicBytes, ++VersionBytes, Header, and each
                                            tile plane "T;x|y;downsample;colour;plane": a
                                            grayscale JPEG of tile x tile, one per colour
  SVSlideDataXPO, SVHRScanDataXPO           the slide's and the scan's describing columns,
  SVScannedImageDataXPO                     the label and macro (colour JPEGs), and the scan's
                                            ThumbnailImage

Level pixels are the source image cut by the downsample (every ds-th pixel), so every level
is known to the test; edge tiles are padded to whole tiles (OpenSlide insists on it)."""

import io
import sqlite3
import struct

import numpy as np
from PIL import Image

TABLE = "SVGigaPixelImage_4f2a"


def gray_jpeg(plane, quality=90):
    b = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane), "L").save(b, "JPEG", quality=quality)
    return b.getvalue()


def rgb_jpeg(arr, quality=90, subsampling=-1):
    b = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr), "RGB").save(b, "JPEG", quality=quality,
                                                            subsampling=subsampling)
    return b.getvalue()


class Sakura:
    """A slide: source (H x W x 3 uint8) is level 0; downsamples the levels' (powers of 2)."""

    def __init__(self, source, tile, downsamples=(1, 2, 4), planes=1):
        self.source = source
        self.tile = tile
        self.downsamples = list(downsamples)
        self.planes = planes
        self.skip = set()  # (ds, col, row): no plane of the tile
        self.skip_colour = set()  # (ds, col, row, colour): that colour's plane left out
        # colours whose planes are colour JPEGs (of the plane's pixels inverted and the next
        # two colours' as its red, green and blue: OpenSlide reads their luma), and their chroma
        # subsampling (PIL's: 0 4:4:4, 2 4:2:0)
        self.colour_planes = set()
        self.colour_subsampling = 2
        self.label = self.macro = self.thumbnail = None
        self.slide_props = {"SlideId": "SL-0042", "Date": "2026-12-07 10:11:12",
                            "Description": "a slide written at test time", "Creator": "tessera",
                            "DiagnosisCode": "", "Keywords": "test;sakura"}
        self.scan_props = {"ScanId": "SC-7", "Date": "2026-12-07", "Name": "scan",
                           "Description": "hr scan", "ResolutionMmPerPix": 0.000252,
                           "NominalLensMagnification": 40.0, "FocussingMethod": "auto"}
        self.version = "1.0.3"
        self.header_extra = b""
        self.extra_rows = []  # (id, data) put in the unique table as they are

    @property
    def width(self):
        return self.source.shape[1]

    @property
    def height(self):
        return self.source.shape[0]

    def level(self, ds):
        """The level's pixels: every ds-th source pixel, cut to width // ds x height // ds."""
        w, h = self.width // ds, self.height // ds
        return self.source[::ds, ::ds][:h, :w]

    def plane_pixels(self, ds, plane):
        """What focal plane `plane` shows: plane p is the level shifted by 40 p grey levels."""
        lv = self.level(ds).astype(np.int16)
        return ((lv + 40 * plane) % 256).astype(np.uint8)

    def tile_rows(self):
        t = self.tile
        for ds in self.downsamples:
            for plane in range(self.planes):
                px = self.plane_pixels(ds, plane)
                h, w = px.shape[:2]
                for row in range((h + t - 1) // t):
                    for col in range((w + t - 1) // t):
                        if (ds, col, row) in self.skip:
                            continue
                        part = px[row * t:(row + 1) * t, col * t:(col + 1) * t]
                        whole = np.zeros((t, t, 3), np.uint8)
                        whole[:part.shape[0], :part.shape[1]] = part
                        # pad with the edge's pixels, as a scanner's tile goes on
                        whole[part.shape[0]:, :part.shape[1]] = part[-1:, :]
                        whole[:, part.shape[1]:] = whole[:, part.shape[1] - 1:part.shape[1]]
                        for colour in range(3):
                            if (ds, col, row, colour) in self.skip_colour:
                                continue
                            tid = "T;%d|%d;%d;%d;%d" % (col * t * ds, row * t * ds, ds, colour,
                                                         plane)
                            if colour in self.colour_planes:
                                rgb = whole[..., [colour, (colour + 1) % 3, (colour + 2) % 3]]
                                rgb[..., 0] = 255 - rgb[..., 0]
                                yield tid, rgb_jpeg(rgb, subsampling=self.colour_subsampling)
                            else:
                                yield tid, gray_jpeg(whole[..., colour])

    def header(self):
        return struct.pack("<IIIII", self.tile, self.width, self.height, 0,
                           self.planes) + self.header_extra

    def write(self, path):
        db = sqlite3.connect(path)
        c = db.cursor()
        c.execute("CREATE TABLE DataManagerSQLiteConfigXPO (OID INTEGER PRIMARY KEY, "
                  "TableName TEXT)")
        c.execute("INSERT INTO DataManagerSQLiteConfigXPO (TableName) VALUES (?)", (TABLE,))
        c.execute('CREATE TABLE "%s" (id TEXT, data BLOB)' % TABLE)
        rows = [("++MagicBytes", "SVGigaPixelImage"), ("++VersionBytes", self.version),
                ("Header", self.header())]
        rows += list(self.tile_rows())
        rows += self.extra_rows
        c.executemany('INSERT INTO "%s" (id, data) VALUES (?, ?)' % TABLE, rows)
        c.execute('CREATE INDEX "%s_id" ON "%s" (id)' % (TABLE, TABLE))
        c.execute("CREATE TABLE SVScannedImageDataXPO (OID INTEGER PRIMARY KEY, Image BLOB)")
        label_oid = macro_oid = None
        if self.label is not None:
            c.execute("INSERT INTO SVScannedImageDataXPO (OID, Image) VALUES (11, ?)",
                      (rgb_jpeg(self.label),))
            label_oid = 11
        if self.macro is not None:
            c.execute("INSERT INTO SVScannedImageDataXPO (OID, Image) VALUES (12, ?)",
                      (rgb_jpeg(self.macro),))
            macro_oid = 12
        cols = list(self.slide_props)
        c.execute("CREATE TABLE SVSlideDataXPO (OID INTEGER PRIMARY KEY, %s, m_labelScan INTEGER,"
                  " m_overviewScan INTEGER)" % ", ".join(cols))
        c.execute("INSERT INTO SVSlideDataXPO (OID, %s, m_labelScan, m_overviewScan) VALUES "
                  "(1, %s, ?, ?)" % (", ".join(cols), ", ".join("?" * len(cols))),
                  [self.slide_props[k] for k in cols] + [label_oid, macro_oid])
        scols = list(self.scan_props)
        c.execute("CREATE TABLE SVHRScanDataXPO (OID INTEGER PRIMARY KEY, ParentSlide INTEGER, "
                  "%s, ThumbnailImage BLOB)" % ", ".join(scols))
        thumb = rgb_jpeg(self.thumbnail) if self.thumbnail is not None else None
        c.execute("INSERT INTO SVHRScanDataXPO (OID, ParentSlide, %s, ThumbnailImage) VALUES "
                  "(5, 1, %s, ?)" % (", ".join(scols), ", ".join("?" * len(scols))),
                  [self.scan_props[k] for k in scols] + [thumb])
        db.commit()
        db.close()
        return path
