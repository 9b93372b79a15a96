"""Displays of PUMA's results (they draw with matplotlib, imported when plotting).

- :class:`ValuesDisplay`: the distribution of data values, marked points apart.
- :class:`MislabelDetectionDisplay`: mislabelled points found against data inspected.
- :class:`ReliabilityDisplay`: reliability diagrams with their binned ECE.
- :class:`DecisionRegionsDisplay`: 2-D decision regions, removed points crossed out.
"""

from ._displays import (
    DecisionRegionsDisplay,
    MislabelDetectionDisplay,
    ReliabilityDisplay,
    ValuesDisplay,
)

__all__ = [
    "DecisionRegionsDisplay",
    "MislabelDetectionDisplay",
    "ReliabilityDisplay",
    "ValuesDisplay",
]
