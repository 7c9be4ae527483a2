"""Evaluation as in the paper (appendix A.2, Table 1): Face-sim, DINO-sim, CLIP-B / CLIP-L text
alignment, temporal consistency and FVD of generated videos, over a test set of cases.

cases.py (the test set and its builder), clip_metrics.py, face.py, dino.py, fvd.py (one file per
metric family), runner.py (`polyvivid eval`: load the models a run asks for, score every case, report).
"""
