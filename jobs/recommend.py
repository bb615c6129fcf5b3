"""spark-submit entry of batch recommendations (the nightly DAG submits this file;
`vqrec recommend` runs the same).

The code lives in :mod:`vqrec.spark.recommend`, installed with the package; this script only
calls it, so the driver and the executors import one copy of it.
"""

import sys

from vqrec.spark.recommend import main

if __name__ == "__main__":
    sys.exit(main())
