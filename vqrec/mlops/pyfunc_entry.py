"""Models-from-code entry of the registered VQ-Rec models (``vqrec-<domain>``, the backbone).

MLflow runs this file when it loads a model, instead of unpickling a Python object: the
registry stores no pickle of ours at all. The class itself lives in :mod:`vqrec.mlops.pyfunc`
and is shipped with the model through ``code_paths``.
"""

import mlflow

from vqrec.mlops.pyfunc import VQRecRecommender

mlflow.models.set_model(VQRecRecommender())
