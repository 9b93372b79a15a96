# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The tabular workflow: a real table, a fitted Pipeline, values, a patch
#
# A model trained elsewhere is a `Pipeline`: a `ColumnTransformer` that one-hot encodes
# the text columns and scales the numbers, then a `LogisticRegression`. PUMA values
# every training row of it and patches the most harmful rows out **without refitting
# anything**: `PumaPatcher(FrozenEstimator(pipeline))` keeps the fitted preprocessing
# and patches the last step.
#
# The data are the Palmer penguins (`palmerpenguins`, shipped with its CSV), predicting
# a penguin's sex from its species, island and measurements. About a tenth of the
# training labels are flipped on purpose, so that we know which rows are wrong.
#
# This file is a [jupytext](https://jupytext.readthedocs.io) percent script: open it
# as a notebook (`jupytext --to notebook`), or run it as it is
# (`MPLBACKEND=Agg python examples/notebooks/tabular_workflow.py`).

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from palmerpenguins import load_penguins
from sklearn.compose import ColumnTransformer
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from sklearn_puma import PumaPatcher

# %% [markdown]
# ## The table
#
# Rows without a recorded sex are dropped; the table keeps its original row labels,
# which every result below refers to.

# %%
penguins = load_penguins().dropna(subset=["sex"])
X = penguins.drop(columns=["sex", "year"])
y = penguins["sex"]
X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=0.5, stratify=y,
                                                    random_state=0)
X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=0.5,
                                                stratify=y_rest, random_state=0)

rng = np.random.default_rng(0)
flipped = pd.Series(False, index=y_train.index)
flipped[rng.choice(y_train.index, size=int(0.12 * len(y_train)), replace=False)] = True
y_noisy = y_train.where(~flipped, y_train.map({"male": "female", "female": "male"}))
X_train.head()

# %% [markdown]
# ## The model, fitted elsewhere

# %%
text_columns = ["species", "island"]
number_columns = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
model = Pipeline([
    ("preprocess", ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore"), text_columns),
        ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
         number_columns),
    ])),
    ("classifier", LogisticRegression(max_iter=1000)),
]).fit(X_train, y_noisy)
accuracy_before = model.score(X_test, y_test)
print(f"held-out accuracy of the model trained on noisy labels: {accuracy_before:.3f}")

# %% [markdown]
# ## Values
#
# The criterion is the log loss on the validation rows, given raw: they go through the
# same fitted preprocessing. `set_output(transform="pandas")` makes `value()` a Series
# indexed like the training table (`values_` stays a numpy array).
# Positive = helpful, negative = harmful.

# %%
puma = PumaPatcher(FrozenEstimator(model), criterion="log_loss")
puma.set_output(transform="pandas")
puma.fit(X_train, y_noisy, eval_set=(X_val, y_val))
values = puma.value()
values.describe()

# %%
fig_values, (ax_sorted, ax_hist) = plt.subplots(1, 2, figsize=(10, 3.5))
order = np.argsort(values.to_numpy(), kind="stable")
ax_sorted.plot(np.arange(len(values)), values.to_numpy()[order], color="0.3")
is_flipped = flipped.loc[values.index].to_numpy()
ax_sorted.scatter(np.flatnonzero(is_flipped[order]), values.to_numpy()[order][is_flipped[order]],
                  color="tab:red", s=12, label="flipped label", zorder=3)
ax_sorted.axhline(0, color="0.7", lw=0.8)
ax_sorted.set(xlabel="training rows, by value", ylabel="value (log loss units)",
              title="Values of the training rows")
ax_sorted.legend()
ax_hist.hist([values[~is_flipped], values[is_flipped]], bins=30, stacked=True,
             color=["0.6", "tab:red"], label=["clean", "flipped"])
ax_hist.set(xlabel="value", ylabel="rows", title="Flipped labels sit on the left")
ax_hist.legend()
fig_values.tight_layout()

# %% [markdown]
# ## Inspect: the most harmful rows, by their labels in the table

# %%
n_remove = 20
harmful = values.nsmallest(n_remove)
most_harmful = X_train.loc[harmful.index].assign(
    label=y_noisy.loc[harmful.index], flipped=flipped.loc[harmful.index],
    value=harmful)
print(f"{most_harmful['flipped'].sum()} of the {n_remove} most harmful rows have a "
      f"flipped label ({flipped.mean():.0%} of all training rows do)")
most_harmful.head(10)

# %% [markdown]
# ## Patch them out, without refitting

# %%
positions = X_train.index.get_indexer(harmful.index)
puma.patch(positions)
accuracy_after = puma.score(X_test, y_test)
print(f"eta_ = {puma.eta_:.3f}; criterion {puma.criterion_before_} -> "
      f"{puma.criterion_after_}")
print(f"held-out accuracy: {accuracy_before:.3f} before, {accuracy_after:.3f} after")
puma.estimator_  # a Pipeline: the same fitted preprocessing, the patched classifier

# %% [markdown]
# ## Verify
#
# The patched classifier is the one a refit on the transformed training rows with
# `sample_weight_` (0 on the removed rows) gives, and the preprocessing is the fitted
# one, untouched.

# %%
assert puma.estimator_["preprocess"] is not model["preprocess"]  # a copy, never refitted
X_train_model = model["preprocess"].transform(X_train)
refit = LogisticRegression(solver="newton-cholesky", tol=1e-12, max_iter=1000).fit(
    X_train_model, y_noisy, sample_weight=puma.sample_weight_)
patched = puma.estimator_["classifier"]
coef_patched = np.r_[patched.coef_.ravel(), patched.intercept_]
coef_refit = np.r_[refit.coef_.ravel(), refit.intercept_]
gap = np.max(np.abs(coef_patched - coef_refit)) / np.max(np.abs(coef_refit))
print(f"largest parameter difference, patch against refit: {gap:.1e} (relative)")

fig_verify, (ax_acc, ax_coef) = plt.subplots(1, 2, figsize=(10, 3.5))
ax_acc.bar(["before", "after patch"], [accuracy_before, accuracy_after],
           color=["0.6", "tab:blue"])
ax_acc.set(ylim=(0.5, 1), ylabel="held-out accuracy",
           title=f"{n_remove} most harmful rows patched out")
ax_coef.scatter(coef_refit, coef_patched, color="tab:blue")
lim = np.abs(np.r_[coef_refit, coef_patched]).max() * 1.1
ax_coef.plot([-lim, lim], [-lim, lim], color="0.7", lw=0.8)
ax_coef.set(xlabel="refit on sample_weight_", ylabel="patch",
            title="Parameters: patch against refit")
fig_verify.tight_layout()

if __name__ == "__main__":
    plt.show()
