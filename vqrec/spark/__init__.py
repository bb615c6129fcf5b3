"""The Spark stages (clean, encode) and their readers; ``jobs/`` holds the spark-submit
entry scripts that call them."""

import os

DEFAULT_DRIVER_MEMORY = "4g"


def driver_memory() -> str:
    """The Spark driver's heap: ``$VQREC_SPARK_DRIVER_MEMORY``, else 4g.

    It must be set where the driver's JVM starts: the session builder when the CLI or a test
    starts it (vqrec.spark.common), ``spark-submit --driver-memory`` under Airflow
    (vqrec.orchestration.airflow_support). A session's conf comes too late under
    spark-submit: the JVM already runs with spark-submit's default of 1g, which the clean job
    of the three shared Amazon domains overran (Java heap space).
    """
    return os.environ.get("VQREC_SPARK_DRIVER_MEMORY", DEFAULT_DRIVER_MEMORY)
