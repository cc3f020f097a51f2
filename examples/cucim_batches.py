"""cuCIM's batch read, run with only the import changed: eight 224 x 224 patches in batches of 4.

Run: PYTHONPATH=build/python /usr/bin/python3 examples/cucim_batches.py SLIDE
"""
import sys

import numpy as np
from tessera import CuImage  # was: from cucim import CuImage

cache = CuImage.cache("per_process", memory_capacity=1024)

img = CuImage(sys.argv[1])

locations = [[0,   0], [100,   0], [200,   0], [300,   0],
             [0, 200], [100, 200], [200, 200], [300, 200]]
locations = np.array(locations)

batches = img.read_region(locations, (224, 224), batch_size=4, num_workers=8)

for batch in batches:
    img = np.asarray(batch)
    print(img.shape)
    for item in img:
        print(item.shape)
