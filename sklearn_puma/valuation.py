"""Data-valuation baselines with PumaPatcher's interface (``fit`` then ``values_``,
positive = helpful, in units of the metric); see :mod:`sklearn_puma._valuation`."""

from ._valuation import (
    DVRL,
    DataOOB,
    GradientShapley,
    InfluenceFunctions,
    KNNShapley,
    LeaveOneOut,
    RepresenterPoints,
    TMCShapley,
)

__all__ = ["DVRL", "DataOOB", "GradientShapley", "InfluenceFunctions", "KNNShapley", "LeaveOneOut", "RepresenterPoints",
           "TMCShapley"]
