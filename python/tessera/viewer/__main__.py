"""python3 -m tessera.viewer SLIDE ...: what `tessera view` runs."""
import sys

from . import main

sys.exit(main())
