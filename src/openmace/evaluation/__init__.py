"""Evaluation of a model on many structures: batched prediction, error metrics and plots.

Used by ``openmace eval``, by validation during training and by the final error tables.
"""

from openmace.evaluation.metrics import Predictions, error_rows, format_table, predictions_from
from openmace.evaluation.predict import predict_configurations, predict_graphs, split_by_structure

__all__ = [
    "Predictions",
    "error_rows",
    "format_table",
    "predict_configurations",
    "predict_graphs",
    "predictions_from",
    "split_by_structure",
]
