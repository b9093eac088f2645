"""ris: reverse image search as a reproducible experiment pipeline."""

import os

__version__ = "0.1.0"

# Large tensors in transparent huge pages: without it every activation of a CNN forward pass is a fresh mapping
# faulted in 4 KiB at a time (about 16,000 page faults per MobileNetV2 image), and on a 2-core CPU embedding ran
# at 0.62x (default layout) and 0.76x (channels-last) of the speed it has with it (ris bench extract). Read by
# torch once, at its first allocation, so it is set here, before any ris module imports torch; an explicit
# THP_MEM_ALLOC_ENABLE=0 wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
