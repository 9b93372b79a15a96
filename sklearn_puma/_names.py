"""Names that the command line needs before anything heavy is imported."""

# The built-in criteria, in the order the docs list them (``_criteria`` checks that its
# registry holds exactly these).
CRITERION_NAMES = ("loss", "log_loss", "brier", "ece", "accuracy", "squared_error",
                   "per_class_loss", "demographic_parity", "equalized_odds")
# Those that compare groups, and so need fit(..., groups=...).
GROUP_CRITERIA = ("demographic_parity", "equalized_odds")
