"""The Spark stages (clean, encode) and their readers; ``jobs/`` holds the spark-submit
entry scripts that call them."""
