"""spark-submit entry of the encode stage (the DAGs submit this file; `vqrec encode` runs the same).

The code lives in :mod:`vqrec.spark.encode`, installed with the package; this script only
calls it, so the driver and the executors import one copy of it.
"""

import sys

from vqrec.spark.encode import main

if __name__ == "__main__":
    sys.exit(main())
