"""vqrec: transferable sequential recommenders (VQ-Rec) as a batch pipeline."""

import logging

# faiss logs, at INFO, every optional CPU build it could not load (AVX512-SPR, AVX512, ...)
# with the ModuleNotFoundError, before it loads the one that works: lines that read like
# failures. Its loader keeps to warnings (a build that fails for real still raises).
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
