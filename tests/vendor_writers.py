"""Writers of vendor-format fixtures (Philips TIFF, OME-TIFF), made at test time from real
pixels: a region of the Aperio sample slide in ../shared/testdata as OpenSlide decodes it.

Tiles are written by tifffile. Without imagecodecs, tifffile cannot encode JPEG, so JPEG tiles
are encoded by PIL (libjpeg) and handed to tifffile already encoded; an empty tile (b"") is
stored with byte count 0, as sparse Philips slides store the tiles they did not scan.

The Philips XML follows the layout of the format's ImageDescription as OpenSlide documents and
reads it: <DataObject ObjectType="DPUfsImport"> of <Attribute Name=...> elements, the scanned
images in PIM_DP_SCANNED_IMAGES (PIM_DP_IMAGE_TYPE WSI / LABELIMAGE / MACROIMAGE), each WSI
level's DICOM_PIXEL_SPACING in PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE, associated images as
base64 JPEG in PIM_DP_IMAGE_DATA. The OME-XML follows the 2016-06 schema.
"""

import base64
import io
import os
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import tifffile
from PIL import Image

import wsi_fixtures as F

SVS = os.path.join(F.TESTDATA, "aperio-jpeg-CMU-1-Small-Region.svs")


def _never_encode(*args, **kw):
    raise RuntimeError("JPEG tiles are given to tifffile already encoded")


# Lets tifffile write compression 7 with tiles that are already JPEG (it never calls this).
tifffile.TIFF.COMPRESSORS._codecs[7] = _never_encode


def source_rgb(width, height, x=0, y=0):
    """Real slide pixels: a region of the Aperio sample, as OpenSlide decodes it."""
    import openslide
    with openslide.OpenSlide(SVS) as s:
        img = s.read_region((x, y), 0, (width, height)).convert("RGB")
    return np.ascontiguousarray(np.asarray(img))


def jpeg_bytes(arr, quality=90):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_tiles(arr, tile, fill=0, skip=()):
    """The JPEG tiles of arr, row by row; tiles at the edge are padded with `fill`; tiles whose
    index is in skip are left out (b"")."""
    h, w = arr.shape[:2]
    out = []
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            if len(out) in skip:
                out.append(b"")
                continue
            t = np.full((tile, tile, 3), fill, np.uint8)
            part = arr[ty:ty + tile, tx:tx + tile]
            t[:part.shape[0], :part.shape[1]] = part
            out.append(jpeg_bytes(t))
    return out


def write_jpeg_tiled(tw, arr, tile, skip=(), **kw):
    """One JPEG-tiled, YCbCr 4:2:0 directory of arr (its full size as the TIFF's size)."""
    h, w = arr.shape[:2]
    tw.write(iter(jpeg_tiles(arr, tile, skip=skip)), shape=(h, w, 3), dtype=np.uint8,
             tile=(tile, tile), compression=7, photometric="ycbcr", subsampling=(2, 2),
             metadata=None, **kw)


def reduce(arr, factor):
    """arr made factor times smaller (PIL's box filter): a level's true content."""
    h, w = arr.shape[:2]
    img = Image.fromarray(arr).resize((w // factor, h // factor), Image.BOX)
    return np.asarray(img)


# ---- Philips --------------------------------------------------------------------------


def _attr(name, value, group="0x0000", element="0x0000", vr="IString"):
    return '<Attribute Name=%s Group="%s" Element="%s" PMSVR="%s">%s</Attribute>' % (
        quoteattr(name), group, element, vr, value)


def _array(name, objects, vr="IDataObjectArray"):
    return '<Attribute Name=%s Group="0x0000" Element="0x0000" PMSVR="%s"><Array>%s</Array>' \
           '</Attribute>' % (quoteattr(name), vr, "".join(objects))


def spacing_text(row_mm, col_mm, quote='"'):
    """DICOM_PIXEL_SPACING: row spacing, then column spacing, each in quotes (millimetres)."""
    return "%s%s%s %s%s%s" % (quote, repr(row_mm), quote, quote, repr(col_mm), quote)


def philips_xml(level_spacings, top_spacing, label_jpeg=None, macro_jpeg=None, wsi_count=1,
                extra_top=(), quote='"'):
    """The ImageDescription XML. level_spacings: (row_mm, col_mm) of each level."""
    reps = []
    for i, (r, c) in enumerate(level_spacings):
        reps.append('<DataObject ObjectType="PixelDataRepresentation">%s%s%s</DataObject>' % (
            _attr("DICOM_PIXEL_SPACING", spacing_text(r, c, quote), "0x0028", "0x0030",
                  "IDoubleArray"),
            _attr("PIIM_PIXEL_DATA_REPRESENTATION_NUMBER", str(i), "0x101D", "0x1008", "IUInt16"),
            _attr("PIIM_DP_PIXEL_DATA_REPRESENTATION_POSITION",
                  '"0" "0" "%d"' % i, "0x101D", "0x100B", "IDoubleArray")))
    wsi = '<DataObject ObjectType="DPScannedImage">%s%s%s%s</DataObject>' % (
        _attr("DICOM_DERIVATION_DESCRIPTION", escape("tiff-useBigTIFF=1 <x> & \"y\"")),
        _attr("PIM_DP_IMAGE_TYPE", "WSI"),
        _attr("PIM_DP_IMAGE_COLUMNS", "4096", vr="IUInt32"),
        _array("PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE", reps))
    images = [wsi] * wsi_count
    for kind, data in (("LABELIMAGE", label_jpeg), ("MACROIMAGE", macro_jpeg)):
        if data is not None:
            images.append('<DataObject ObjectType="DPScannedImage">%s%s</DataObject>' % (
                _attr("PIM_DP_IMAGE_TYPE", kind),
                _attr("PIM_DP_IMAGE_DATA", data if isinstance(data, str)
                      else base64.b64encode(data).decode())))
    top = [_attr("DICOM_MANUFACTURER", "PHILIPS", "0x0008", "0x0070"),
           _attr("DICOM_PIXEL_SPACING", spacing_text(top_spacing[0], top_spacing[1], quote),
                 "0x0028", "0x0030", "IDoubleArray"),
           _attr("DICOM_SOFTWARE_VERSIONS", '"1.6.5505" "20111209_R44"', "0x0018", "0x1020",
                 "IStringArray")]
    top += list(extra_top)
    top.append(_array("PIM_DP_SCANNED_IMAGES", images))
    return ('<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">\n'
            + "\n".join(top) + "\n</DataObject>\n")


class PhilipsSlide:
    """The pieces of a Philips fixture, kept for the tests' expectations."""

    def __init__(self, base, tile, factors):
        self.base, self.tile, self.factors = base, tile, factors
        self.levels = [base] + [reduce(base, f) for f in factors[1:]]

    def padded(self, i):
        """Level i as stored: its true content, padded to whole tiles (black: if a reader
        showed the padding, the test would see it)."""
        a = self.levels[i]
        t = self.tile
        h, w = a.shape[:2]
        out = np.zeros((-(-h // t) * t, -(-w // t) * t, 3), np.uint8)
        out[:h, :w] = a
        return out


def write_philips(path, slide, xml, sparse=(), label=None, macro=None,
                  software="Philips DP v1.0", dir_label_desc="Label", dir_macro_desc="Macro"):
    """A Philips TIFF: level 0 at its true size, the smaller levels padded to whole tiles
    (as Philips pads them), then the label and macro as stripped directories when given as
    arrays. sparse: tile indices of level 0 stored with byte count 0."""
    if isinstance(xml, str):
        xml = xml.encode("utf-8")  # tifffile takes only ASCII as str
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        write_jpeg_tiled(tw, slide.levels[0], slide.tile, skip=sparse, description=xml,
                         software=software)
        for i in range(1, len(slide.levels)):
            write_jpeg_tiled(tw, slide.padded(i), slide.tile, subfiletype=1,
                             software=software)
        for arr, desc in ((label, dir_label_desc), (macro, dir_macro_desc)):
            if arr is not None:
                tw.write(arr, photometric="rgb", compression="zlib", rowsperstrip=64,
                         description=desc, metadata=None, software=software)


# ---- OME-TIFF -------------------------------------------------------------------------

OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


def ome_pixels(pid, w, h, c, channels, tiffdata, phys=None, dtype="uint8", interleaved=None):
    attrs = 'ID="%s" DimensionOrder="XYCZT" Type="%s" SizeX="%d" SizeY="%d" SizeC="%d" ' \
            'SizeZ="1" SizeT="1"' % (pid, dtype, w, h, c)
    if interleaved is not None:
        attrs += ' Interleaved="%s"' % ("true" if interleaved else "false")
    for k, v in (phys or {}).items():
        attrs += " %s=%s" % (k, quoteattr(str(v)))
    chans = "".join('<Channel ID="Channel:%s:%d" Name=%s SamplesPerPixel="%d"/>' % (
        pid.split(":")[1], i, quoteattr(name), spp) for i, (name, spp) in enumerate(channels))
    return "<Pixels %s>%s%s</Pixels>" % (attrs, chans, tiffdata)


def ome_image(iid, name, pixels, description=None, objective=None, date=None):
    inner = ""
    if date:
        inner += "<AcquisitionDate>%s</AcquisitionDate>" % escape(date)
    if description is not None:
        inner += "<Description>%s</Description>" % escape(description)
    if objective:
        inner += '<ObjectiveSettings ID="%s"/>' % objective
    return '<Image ID="%s" Name=%s>%s%s</Image>' % (iid, quoteattr(name), inner, pixels)


def ome_xml(images, objectives=(), prefix=""):
    """images: <Image> strings; objectives: (id, nominal magnification)."""
    p = prefix + ":" if prefix else ""
    xmlns = ('xmlns:%s="%s"' % (prefix, OME_NS)) if prefix else ('xmlns="%s"' % OME_NS)
    inst = ""
    if objectives:
        inst = '<Instrument ID="Instrument:0">%s</Instrument>' % "".join(
            '<Objective ID="%s" NominalMagnification="%s"/>' % o for o in objectives)
    body = inst + "".join(images)
    if prefix:
        body = body.replace("<", "<" + p).replace("<" + p + "/", "</" + p)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<%sOME %s xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'Creator="tessera tests">%s</%sOME>' % (p, xmlns, body, p))


def pyramid_arrays(base, n):
    out = [base]
    for _ in range(n - 1):
        out.append(np.ascontiguousarray(out[-1][::2, ::2]))
    return out


def write_ome(path, pages, description):
    """pages: (array, subifd arrays, tile or None, compression) per main-chain directory; the
    first carries the OME-XML."""
    with tifffile.TiffWriter(path) as tw:
        for i, (arr, subs, tile, comp) in enumerate(pages):
            kw = dict(compression=comp, metadata=None,
                      photometric="rgb" if arr.ndim == 3 else "minisblack")
            if tile:
                kw["tile"] = (tile, tile)
            if i == 0:
                kw["description"] = description.encode("utf-8")
            tw.write(arr, subifds=len(subs) if subs else None, **kw)
            kw.pop("description", None)
            for s in subs or ():
                tw.write(s, subfiletype=1, **kw)


# ---- Leica SCN ------------------------------------------------------------------------

LEICA_NS = {"2010/10/01": "http://www.leica-microsystems.com/scn/2010/10/01",
            "2010/03/10": "http://www.leica-microsystems.com/scn/2010/03/10"}


def leica_image(dims, view, illumination="brightfield", objective="20", aperture="0.4",
                date="2012-03-02T09:45:10.21Z", model="Leica SCN400;Leica SCN",
                version="1.4.0.10719 2010/12/01 12:33:48;1.4.0.10719", extra=""):
    """One <image> of an SCN collection: dims [(ifd, width, height, z or None)], view (sizeX,
    sizeY, offsetX, offsetY) in nm; None leaves an element out."""
    dim = "".join('<dimension sizeX="%d" sizeY="%d" ifd="%d"%s/>'
                  % (w, h, ifd, "" if z is None else ' z="%s"' % z) for ifd, w, h, z in dims)
    parts = ['<image name="i" uuid="urn:uuid:0">']
    if date is not None:
        parts.append("<creationDate>%s</creationDate>" % escape(date))
    if model is not None:
        parts.append("<device model=%s version=%s/>" % (quoteattr(model), quoteattr(version)))
    parts.append('<pixels sizeX="%d" sizeY="%d">%s</pixels>' % (dims[0][1], dims[0][2], dim))
    parts.append('<view sizeX="%d" sizeY="%d" offsetX="%d" offsetY="%d" spacingZ="0"/>' % view)
    settings = ""
    if objective is not None:
        settings += "<objectiveSettings><objective>%s</objective></objectiveSettings>" % objective
    ill = ""
    if aperture is not None:
        ill += "<numericalAperture>%s</numericalAperture>" % aperture
    if illumination is not None:
        ill += "<illuminationSource>%s</illuminationSource>" % illumination
    settings += "<illuminationSettings>%s</illuminationSettings>" % ill
    parts.append("<scanSettings>%s</scanSettings>%s</image>" % (settings, extra))
    return "".join(parts)


def leica_xml(collection_nm, images, barcode="SCN-0042 slide", ns="2010/10/01"):
    """The SCN document: a collection of collection_nm (width, height) nm holding images
    (leica_image's); the barcode as base64 text (2010/10/01) or an attribute (2010/03/10)."""
    if ns == "2010/10/01":
        head = '<collection name="c" uuid="urn:uuid:1" sizeX="%d" sizeY="%d">' % collection_nm
        if barcode is not None:
            head += "<barcode>%s</barcode>" % base64.b64encode(barcode.encode()).decode()
    else:
        head = '<collection name="c" uuid="urn:uuid:1" sizeX="%d" sizeY="%d"%s>' % (
            collection_nm + ("" if barcode is None else " barcode=%s" % quoteattr(barcode),))
    return ('<?xml version="1.0" encoding="utf-8"?>\n<scn xmlns="%s">%s%s</collection></scn>'
            % (LEICA_NS[ns], head, "".join(images)))


def write_leica(path, directories, xml):
    """A BigTIFF of JPEG-tiled directories, in order: each (array, tile, skip, resolution)
    where resolution is pixels per centimetre or None; the XML on the first."""
    if isinstance(xml, str):
        xml = xml.encode("utf-8")
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, (arr, tile, skip, res) in enumerate(directories):
            kw = {}
            if res is not None:
                kw = dict(resolution=(res, res), resolutionunit="CENTIMETER")
            write_jpeg_tiled(tw, arr, tile, skip=skip, description=xml if i == 0 else None,
                             software="Leica SCN", **kw)


# ---- Ventana BIF / TIFF -----------------------------------------------------------------

def ventana_iscan(attrs=None, root="iScan"):
    """The first directory's XMLPacket: <iScan> with attrs (as the root, or in <Metadata>)."""
    attrs = attrs if attrs is not None else {
        "Magnification": "40", "ScanRes": "0,2325", "UnitNumber": "BI10N0042",
        "BuildVersion": "1.1.0.15854", "SlideAnnotation": "", "ShowLabel": "0"}
    iscan = "<iScan %s/>" % " ".join("%s=%s" % (k, quoteattr(v)) for k, v in attrs.items())
    body = iscan if root == "iScan" else "<Metadata>%s</Metadata>" % iscan
    return '<?xml version="1.0" encoding="utf-8"?>' + body


def bif_tile_number(col, row, across, down):
    """The 1-based number of a tile as BIF joints count them: rows from the bottom, every other
    row right to left."""
    rb = down - 1 - row
    c = col if rb % 2 == 0 else across - 1 - col
    return rb * across + c + 1


def bif_encode_info(areas, tile, overlaps_x, overlaps_y, unscanned=0):
    """Level 0's EncodeInfo: areas [(start_col, start_row, across, down, pos_x, pos_y)]; the
    RIGHT joints take OverlapX from overlaps_x in turn, the UP joints OverlapY from overlaps_y;
    unscanned areas (AOIScanned 0) are added after them."""
    infos, origins = [], []
    ix, iy = iter(overlaps_x * 1000), iter(overlaps_y * 1000)
    for n, (sc, sr, across, down, px, py) in enumerate(areas):
        joints = []
        for r in range(down):
            for c in range(across):
                t = bif_tile_number(c, r, across, down)
                if c + 1 < across:
                    joints.append('<TileJointInfo FlagJoined="1" Confidence="10" Direction="RIGHT"'
                                  ' Tile1="%d" Tile2="%d" OverlapX="%s" OverlapY="7"/>'
                                  % (t, bif_tile_number(c + 1, r, across, down), next(ix)))
                if r > 0:
                    joints.append('<TileJointInfo FlagJoined="1" Confidence="10" Direction="UP"'
                                  ' Tile1="%d" Tile2="%d" OverlapX="-5" OverlapY="%s"/>'
                                  % (t, bif_tile_number(c, r - 1, across, down), next(iy)))
        infos.append('<ImageInfo AOIScanned="1" AOIIndex="%d" Width="%d" Height="%d" '
                     'NumRows="%d" NumCols="%d" Pos-X="%s" Pos-Y="%s">%s</ImageInfo>'
                     % (n, tile, tile, down, across, px, py, "".join(joints)))
        origins.append('<AOI%d OriginX="%d" OriginY="%d"/>' % (n, sc * tile, sr * tile))
    for k in range(unscanned):
        infos.append('<ImageInfo AOIScanned="0" AOIIndex="%d"/>' % (len(areas) + k))
        origins.append('<AOI%d OriginX="0" OriginY="0"/>' % (len(areas) + k))
    return ('<?xml version="1.0" encoding="utf-8"?><EncodeInfo Ver="2"><SlideInfo/>'
            '<SlideStitchInfo>%s</SlideStitchInfo><AoiOrigin>%s</AoiOrigin></EncodeInfo>'
            % ("".join(infos), "".join(origins)))


def write_ventana(path, iscan, levels, tile, mags, encode_info=None, macro=None, thumbnail=None,
                  macro_desc="Label_Image"):
    """A Ventana BIF (encode_info given: level 0's XMLPacket) or Ventana TIFF: the macro and
    thumbnail as strips first (the first directory carries iscan), then the JPEG-tiled levels
    described "level=N mag=M quality=90"."""
    def xmp(text):
        b = text.encode("utf-8")
        return [(700, 1, len(b), b, True)]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        first = True
        for arr, desc in ((macro, macro_desc), (thumbnail, "Thumbnail")):
            if arr is not None:
                tw.write(arr, photometric="rgb", compression="zlib", rowsperstrip=64,
                         description=desc, metadata=None,
                         extratags=xmp(iscan) if first else [])
                first = False
        for i, (arr, mag) in enumerate(zip(levels, mags)):
            extra = []
            if first:
                extra = xmp(iscan)
                first = False
            elif i == 0 and encode_info is not None:
                extra = xmp(encode_info)
            write_jpeg_tiled(tw, arr, tile, description="level=%d mag=%s quality=90" % (i, mag),
                             extratags=extra)
