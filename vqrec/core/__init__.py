"""The method itself: VQ-Rec's model, item encoders, losses, code permutation, quantizer,
sequences, metrics and trainer.

Imports only torch, numpy, scipy, faiss and sentence-transformers: no lake, MLflow,
Airflow, Spark or argparse (tests/core/test_purity.py keeps it so). What reads or writes
the lake lives in :mod:`vqrec.lake.store` and :mod:`vqrec.stages`.
"""
