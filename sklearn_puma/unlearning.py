"""Unlearning baselines that PUMA is compared with (each changes how the model is
trained, the cost PUMA avoids); see :mod:`sklearn_puma._unlearning`."""

from ._unlearning import SISA, AmnesiacMLP, UnrollingSGDMLP

__all__ = ["SISA", "AmnesiacMLP", "UnrollingSGDMLP"]
