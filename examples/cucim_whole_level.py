"""cuCIM's whole-level read, run with only the import changed: reads all of level 1 with 8 threads.

Run: PYTHONPATH=build/python /usr/bin/python3 examples/cucim_whole_level.py SLIDE
"""
import sys

import numpy as np
from tessera import CuImage  # was: from cucim import CuImage

img = CuImage(sys.argv[1])

region = img.read_region(level=1, num_workers=8)  # read whole image at level 1 using 8 workers
print(np.asarray(region).shape)
