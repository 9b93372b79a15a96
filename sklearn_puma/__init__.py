"""sklearn-puma: value training points against any criterion, and patch them out.

PUMA (Performance Unchanged Model Augmentation) for scikit-learn models.
"""

from ._adapters import SUPPORTED_ESTIMATORS, UnsupportedEstimatorError
from ._criteria import CRITERION_NAMES
from ._datasets import flip_labels, make_radial
from ._label_errors import rank_label_errors
from ._patcher import PumaPatcher
from ._warnings import (
    NonConvexWarning,
    PartialRemovalWarning,
    PumaWarning,
    SolverWarning,
)

__version__ = "0.1.0"

__all__ = [
    "CRITERION_NAMES",
    "NonConvexWarning",
    "PartialRemovalWarning",
    "PumaPatcher",
    "PumaWarning",
    "SUPPORTED_ESTIMATORS",
    "SolverWarning",
    "UnsupportedEstimatorError",
    "flip_labels",
    "make_radial",
    "rank_label_errors",
]
