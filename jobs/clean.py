"""spark-submit entry of the clean stage (the DAGs submit this file; `vqrec clean` runs the same).

The code lives in :mod:`vqrec.spark.clean`, installed with the package; this script only
calls it, so the driver and the executors import one copy of it.
"""

import sys

from vqrec.spark.clean import main

if __name__ == "__main__":
    sys.exit(main())
