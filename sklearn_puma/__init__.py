"""sklearn-puma: value training points against any criterion, and patch them out.

PUMA (Performance Unchanged Model Augmentation) for scikit-learn models.

Importing the package is cheap: each public name loads its module (and torch, pandas
or matplotlib behind it) on first use, so the command line's ``--help`` and a script
that only needs the warnings answer at once.
"""

import importlib

from ._names import CRITERION_NAMES
from ._warnings import (
    IllConditionedWarning,
    NonConvexWarning,
    PartialRemovalWarning,
    PumaWarning,
    SolverWarning,
)

__version__ = "0.1.0"

# Public name -> the private module that defines it.
_LAZY = {
    "SUPPORTED_ESTIMATORS": "._adapters",
    "UnsupportedEstimatorError": "._adapters",
    "flip_labels": "._datasets",
    "make_bag_of_words": "._datasets",
    "make_radial": "._datasets",
    "rank_label_errors": "._label_errors",
    "PumaPatcher": "._patcher",
}

__all__ = [
    "CRITERION_NAMES",
    "IllConditionedWarning",
    "NonConvexWarning",
    "PartialRemovalWarning",
    "PumaPatcher",
    "PumaWarning",
    "SUPPORTED_ESTIMATORS",
    "SolverWarning",
    "UnsupportedEstimatorError",
    "flip_labels",
    "make_bag_of_words",
    "make_radial",
    "rank_label_errors",
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
