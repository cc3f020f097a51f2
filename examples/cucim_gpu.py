"""cuCIM's GPU batch read, run with only the import changed: batches in GPU memory as CuPy arrays.

Run: PYTHONPATH=build/python /usr/bin/python3 examples/cucim_gpu.py SLIDE
Batches are made in GPU memory (JPEG tiles decoded by nvJPEG) and CuPy takes them without a
copy (__cuda_array_interface__). On a machine without CUDA, a device or nvJPEG, read_region(...,
device="cuda") raises RuntimeError ("CUDA is not available: ..." with the reason).
"""
import sys

import numpy as np
from tessera import CuImage  # was: from cucim import CuImage

try:
    import cupy as cp
except ImportError:
    cp = None  # only needed once a batch arrives; reading with device="cuda" comes first

img = CuImage(sys.argv[1])

locations = [[0,   0], [100,   0], [200,   0], [300,   0],
             [0, 200], [100, 200], [200, 200], [300, 200]]
locations = np.array(locations)

batches = img.read_region(locations, (224, 224), batch_size=4, num_workers=8, device="cuda")

if cp is None:
    sys.exit("cupy is not installed: pip install cupy-cuda12x to hold the batches on the GPU")
for batch in batches:
    img = cp.asarray(batch)
    print(img.shape)
    for item in img:
        print(item.shape)
