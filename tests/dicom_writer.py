"""DICOM whole-slide images (VL Whole Slide Microscopy Image Storage) written at test time with
pydicom (Debian's python3-pydicom) from known pixels: one instance per level or associated
image, or a level cut into a concatenation; frames native (explicit or implicit VR little
endian), JPEG baseline (Pillow) or JPEG 2000 (Pillow through OpenJPEG); TILED_FULL or
TILED_SPARSE with per-frame positions; encapsulated frames of one or several fragments, with
a Basic Offset Table, an Extended Offset Table or neither.

Each written level keeps the frames it wrote and what they decode to (`expected`: the pixels
for native and lossless frames, Pillow's decode of the same bytes for JPEG), so tests compare
against an independent decoder, never against tessera's own output."""

import io
import struct

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
SYNTAX = {
    "native": "1.2.840.10008.1.2.1",
    "implicit": "1.2.840.10008.1.2",
    "jpeg": "1.2.840.10008.1.2.4.50",
    "j2k": "1.2.840.10008.1.2.4.90",
    "j2k-lossy": "1.2.840.10008.1.2.4.91",
}


def source_image(width, height, seed=1):
    """Smooth colour gradients with some noise: structure JPEG keeps, values that vary."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    ((x + y) * 3) % 256], axis=-1).astype(np.int16)
    img += rng.integers(-12, 13, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(tile, codec, j2k_mct=0):
    """(stored bytes, what they decode to) for one frame."""
    if codec in ("native", "implicit"):
        return tile.tobytes(), tile
    buf = io.BytesIO()
    if codec == "jpeg":
        Image.fromarray(tile).save(buf, "JPEG", quality=85)
    else:
        Image.fromarray(tile).save(buf, "JPEG2000", no_jp2=True, mct=j2k_mct,
                                   irreversible=codec == "j2k-lossy",
                                   quality_mode="rates", quality_layers=[20] if
                                   codec == "j2k-lossy" else None)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _item(data):
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(data)) + data


def encapsulate(frames, per_frame=1, bot=True):
    """Encapsulated Pixel Data (its items, without the sequence delimiter pydicom adds), and
    each frame's offset from the first fragment's item."""
    items, offsets, pos = [], [], 0
    for f in frames:
        if len(f) % 2:
            f += b"\0"
        offsets.append(pos)
        cut = max(2, (len(f) // per_frame) & ~1)
        parts = [f[i:i + cut] for i in range(0, len(f), cut)] if per_frame > 1 else [f]
        for p in parts:
            items.append(_item(p))
            pos += 8 + len(p)
    table = struct.pack("<%dI" % len(offsets), *offsets) if bot else b""
    return _item(table) + b"".join(items), offsets


class Level:
    """One image (a pyramid level or an associated image) as tiles of its frames."""

    def __init__(self, image, tile, codec="native", flavor="VOLUME", j2k_mct=0):
        self.image = image
        self.tile = tile
        self.codec = codec
        self.flavor = flavor
        h, w = image.shape[:2]
        tw, th = tile
        self.across = -(-w // tw)
        self.down = -(-h // th)
        self.frames = {}  # (col, row): stored bytes
        self.decoded = {}
        for r in range(self.down):
            for c in range(self.across):
                t = np.zeros((th, tw, 3), np.uint8)
                part = image[r * th:(r + 1) * th, c * tw:(c + 1) * tw]
                t[:part.shape[0], :part.shape[1]] = part
                self.frames[c, r], self.decoded[c, r] = encode(t, codec, j2k_mct)

    def expected(self, skip=(), background=255):
        """The image as the frames decode, tiles in skip painted background."""
        h, w = self.image.shape[:2]
        tw, th = self.tile
        out = np.full((self.down * th, self.across * tw, 3), background, np.uint8)
        for (c, r), d in self.decoded.items():
            if (c, r) not in skip:
                out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = d
        return out[:h, :w]


def dataset(level, series, study, frame_of_reference, sparse=False, frames=None,
            spacing=(0.00025, 0.00025), photometric=None, concat=None, extra=None):
    """The data set of an instance holding level's frames (all, or `frames`: [(col, row)])."""
    h, w = level.image.shape[:2]
    tw, th = level.tile
    if frames is None:
        frames = [(c, r) for r in range(level.down) for c in range(level.across)]
    ds = Dataset()
    ds.SOPClassUID = WSI
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame_of_reference
    ds.Modality = "SM"
    ds.Manufacturer = "tessera tests"
    ds.ImageType = ["ORIGINAL", "PRIMARY", level.flavor, "NONE"]
    ds.PatientName = "Test^Slide"
    ds.PatientID = "T-1"
    ds.StudyDate = "20261207"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    ds.BarcodeValue = "BC-42 "
    ds.ContainerIdentifier = "SLIDE-1"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = photometric or (
        "YBR_FULL_422" if level.codec == "jpeg" else "RGB")
    ds.PlanarConfiguration = 0
    ds.NumberOfFrames = len(frames)
    ds.Rows = th
    ds.Columns = tw
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.TotalPixelMatrixColumns = w
    ds.TotalPixelMatrixRows = h
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.ImagedVolumeWidth = w * spacing[1]
    ds.ImagedVolumeHeight = h * spacing[0]
    ds.DimensionOrganizationType = "TILED_SPARSE" if sparse else "TILED_FULL"
    ds.NumberOfOpticalPaths = 1
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.ObjectiveLensPower = 20
    path.OpticalPathDescription = "Brightfield"
    if extra and "icc" in extra:
        path.ICCProfile = extra["icc"]
    ds.OpticalPathSequence = Sequence([path])
    measures = Dataset()
    measures.PixelSpacing = [spacing[0], spacing[1]]
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    if concat:
        ds.ConcatenationUID = concat["uid"]
        ds.InConcatenationNumber = concat["number"]
        ds.InConcatenationTotalNumber = concat["total"]
        ds.ConcatenationFrameOffsetNumber = concat["offset"]
        ds.SOPInstanceUIDOfConcatenationSource = concat["source"]
    if sparse:
        items = []
        for c, r in frames:
            pos = Dataset()
            pos.ColumnPositionInTotalImagePixelMatrix = c * tw + 1
            pos.RowPositionInTotalImagePixelMatrix = r * th + 1
            pos.XOffsetInSlideCoordinateSystem = c * tw * spacing[1]
            pos.YOffsetInSlideCoordinateSystem = r * th * spacing[0]
            item = Dataset()
            item.PlanePositionSlideSequence = Sequence([pos])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    return ds


def undefined_lengths(ds):
    """Marks every sequence and item of ds to be written with undefined length (delimiters),
    as many scanners write them; pydicom writes defined lengths otherwise."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)


def save(ds, path, level, frames, per_frame=1, bot=True, eot=False, undefined=False):
    """Writes ds with the stored bytes of frames [(col, row)] of level; undefined: sequences
    and items of undefined length."""
    if undefined:
        undefined_lengths(ds)
    codec = level.codec
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = SYNTAX[codec]
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7433.1.1"
    ds.file_meta = meta
    ds.is_little_endian = True
    ds.is_implicit_VR = codec == "implicit"
    data = [level.frames[f] for f in frames]
    if codec in ("native", "implicit"):
        ds.PixelData = b"".join(data)
        ds["PixelData"].VR = "OB"
    else:
        pixels, offsets = encapsulate(data, per_frame, bot)
        if eot:
            ds.ExtendedOffsetTable = struct.pack("<%dQ" % len(offsets), *offsets)
            ds.ExtendedOffsetTableLengths = struct.pack("<%dQ" % len(data),
                                                        *[len(d) for d in data])
        ds.PixelData = pixels
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.preamble = b"\0" * 128
    ds.save_as(path, write_like_original=False)


class Series:
    """A slide: its UIDs, and instances written into a folder."""

    def __init__(self):
        self.series = generate_uid()
        self.study = generate_uid()
        self.frame_of_reference = generate_uid()

    def write(self, path, level, sparse=False, skip=(), per_frame=1, bot=True, eot=False,
              concat_parts=1, frames=None, photometric=None, extra=None, order=None,
              undefined=False):
        """Writes level into path (or, as a concatenation, path + ".partN.dcm"); returns the
        paths. Tiles in skip are left out (sparse levels only); order reorders the frames."""
        if frames is None:
            frames = [(c, r) for r in range(level.down) for c in range(level.across)
                      if (c, r) not in skip]
        if order is not None:
            frames = [frames[i] for i in order]
        if concat_parts == 1:
            ds = dataset(level, self.series, self.study, self.frame_of_reference, sparse, frames,
                         photometric=photometric, extra=extra)
            save(ds, path, level, frames, per_frame, bot, eot, undefined)
            return [path]
        uid, source = generate_uid(), generate_uid()
        n = -(-len(frames) // concat_parts)
        paths = []
        for part in range(concat_parts):
            sub = frames[part * n:(part + 1) * n]
            concat = {"uid": uid, "number": part + 1, "total": concat_parts,
                      "offset": part * n, "source": source}
            ds = dataset(level, self.series, self.study, self.frame_of_reference, sparse, sub,
                         photometric=photometric, concat=concat, extra=extra)
            p = "%s.part%d.dcm" % (path, part + 1)
            save(ds, p, level, sub, per_frame, bot, eot, undefined)
            paths.append(p)
        return paths
