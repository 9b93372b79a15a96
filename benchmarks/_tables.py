"""The real tables the benchmarks read, shipped offline by scikit-learn and other
packages (the ``benchmarks`` extra), each as (X, y) with y as given."""

import pandas as pd
from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_moons


def _penguins():
    from palmerpenguins import load_penguins

    frame = load_penguins().dropna()
    features = pd.get_dummies(frame.drop(columns=["species", "year"]), drop_first=True,
                              dtype=float)
    return features.to_numpy(float), frame["species"].to_numpy()


def _fair():
    from statsmodels.datasets import fair

    frame = fair.load_pandas().data
    return frame.drop(columns="affairs").to_numpy(float), (frame["affairs"] > 0).to_numpy()


def _anes96():
    from statsmodels.datasets import anes96

    frame = anes96.load_pandas().data
    return frame.drop(columns="vote").to_numpy(float), frame["vote"].to_numpy()


def _cars():
    from vega_datasets import local_data

    frame = local_data.cars().dropna()
    features = ["Miles_per_Gallon", "Cylinders", "Displacement", "Horsepower",
                "Weight_in_lbs", "Acceleration"]
    return frame[features].to_numpy(float), frame["Origin"].to_numpy()


def _seattle_weather():
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    features = ["precipitation", "temp_max", "temp_min", "wind"]
    return frame[features].to_numpy(float), frame["weather"].to_numpy()


def _bundled(loader):
    return lambda: loader(return_X_y=True)


def _two_moons():
    return make_moons(1000, noise=0.2, random_state=0)


TABLES = {
    "breast cancer": _bundled(load_breast_cancer),
    "digits": _bundled(load_digits),
    "wine": _bundled(load_wine),
    "two moons": _two_moons,
    "penguins": _penguins,
    "fair": _fair,
    "anes96": _anes96,
    "cars": _cars,
    "seattle weather": _seattle_weather,
}
