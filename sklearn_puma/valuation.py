"""Data-valuation baselines with PumaPatcher's interface (``fit`` then ``values_``,
positive = helpful, in units of the metric); see :mod:`sklearn_puma._valuation`."""

from ._valuation import InfluenceFunctions, KNNShapley, LeaveOneOut, TMCShapley

__all__ = ["InfluenceFunctions", "KNNShapley", "LeaveOneOut", "TMCShapley"]
