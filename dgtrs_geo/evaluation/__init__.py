"""Evaluation: cross-modal retrieval, zero-shot classification, semantic localization, reports.

Only the light retrieval metric is imported here, so ``import dgtrs_geo.evaluation`` stays cheap
for the trainer; the other modules are imported by name (``dgtrs_geo.evaluation.selo`` ...).
"""

from .retrieval import retrieval_recalls

__all__ = ["retrieval_recalls"]
