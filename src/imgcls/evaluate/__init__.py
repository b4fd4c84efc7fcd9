"""``imgcls evaluate``: metrics, plots and a report of a model on labelled data.

:mod:`~imgcls.evaluate.run` runs the model over the data (predict's own inference);
:mod:`~imgcls.evaluate.metrics` computes the metrics.
"""

from imgcls.evaluate.metrics import (
    binary_metrics,
    compute_metrics,
    expected_calibration_error,
    group_accuracy,
    multiclass_metrics,
    multilabel_metrics,
    per_class_table,
    reliability_bins,
)
from imgcls.evaluate.run import EvalResult, choose_rows, collect_probabilities, default_report_dir, evaluate

__all__ = [
    "EvalResult",
    "binary_metrics",
    "choose_rows",
    "collect_probabilities",
    "compute_metrics",
    "default_report_dir",
    "evaluate",
    "expected_calibration_error",
    "group_accuracy",
    "multiclass_metrics",
    "multilabel_metrics",
    "per_class_table",
    "reliability_bins",
]
