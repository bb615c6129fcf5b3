"""MLflow: tracking and plots, the model registry (register, promote, champion), the
registered pyfunc model, serving helpers and the end-of-run report."""
