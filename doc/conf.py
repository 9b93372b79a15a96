"""Sphinx configuration of the sklearn-puma documentation site.

Build: ``sphinx-build -W -b html doc doc/_build/html`` from the repository root.
``PUMA_DOCS_FAST=1`` skips running the gallery's examples (the test suite runs them,
``tests/test_examples.py``), so CI builds the site in seconds.
"""

import os
import sys
import time

# The checkout's package first, ahead of any installed copy, so that the API pages
# document the source beside this file.
sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

import sklearn_puma  # noqa: E402

project = "sklearn-puma"
author = "sklearn-puma developers"
copyright = f"{time.gmtime().tm_year}, {author}"
release = sklearn_puma.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "readme_sections",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

# API pages: one per public name, generated from the autosummary tables in api.rst.
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
# numpydoc renders the members' tables itself; without this each method is listed
# twice (autosummary's table and autodoc's).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# numpydoc validation: every check on the public API, so that `-W` fails the build on
# a docstring that misses one, except these, each for a reason:
numpydoc_validation_checks = {
    "all",
    # SA01 (See Also): a cross-reference list on every method would mostly repeat the
    # class's page; the API index and the user guide link related names instead.
    "SA01",
    # ES01 (extended summary): one-line summaries are complete for most methods
    # (predict, score, recall_at); the classes and functions have one anyway.
    "ES01",
    # EX01 (Examples): every public class and function has an Examples section (the
    # doctests run in the test suite), but its methods (fit, plot, forget, ...) are
    # shown there and in the gallery rather than one doctest each.
    "EX01",
    # RT02 (a single return value given by its type alone): scikit-learn's convention,
    # which the package follows, names it (``self : object``, ``proba : ndarray``), and
    # the name is what the description refers to.
    "RT02",
}
# Only the package's own public API: inherited scikit-learn methods (get_params,
# set_output, ...) and the sklearn/matplotlib objects they mention are not ours.
numpydoc_validation_exclude = {
    r"\.get_params$", r"\.set_params$", r"\.set_output$", r"\.set_\w+_request$",
    r"\.get_metadata_routing$", r"\.fit_transform$", r"\.fit_predict$",
    r"\.__init__$", r"\.with_traceback$", r"\.add_note$",
    r"^builtins\.", r"^sklearn\.",
    # The public constants are tuples: numpydoc would validate the tuple type's own
    # docstring. Their pages get a description from _DATA_DOCS below instead.
    r"^sklearn_puma\.CRITERION_NAMES$", r"^sklearn_puma\.SUPPORTED_ESTIMATORS$",
}
numpydoc_xref_param_type = False

# sphinx-gallery: examples/plot_*.py, executed, one page each.
fast = os.environ.get("PUMA_DOCS_FAST", "") not in ("", "0")
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    # Fast mode: the pages, without running the examples (the test suite runs them).
    "plot_gallery": not fast,
    "download_all_examples": False,
    "remove_config_comments": True,
    # "Examples using X" on each API page (the minigallery in the templates).
    "doc_module": ("sklearn_puma",),
    "backreferences_dir": "generated/backreferences",
    "matplotlib_animations": False,
    "min_reported_time": 1,
    # One thread per pool, as the test suite runs the examples.
    "reset_modules": ("matplotlib",),
}
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-puma {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = []
html_show_sourcelink = False


def _skip_inherited_api(app, what, name, obj, skip, options):
    # scikit-learn adds set_{method}_request to every estimator class at definition
    # time; they are scikit-learn's API (metadata routing), documented there.
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


# The public constants are tuples, whose docstring is the tuple type's; their pages say
# what they hold instead (autodoc still prints each value, so the list stays the code's).
_DATA_DOCS = {
    "sklearn_puma.CRITERION_NAMES": [
        "The names of the built-in criteria that ``criterion=`` accepts.",
        "",
        "Each is lower-is-better and differentiable; :doc:`/guide/criteria` gives each",
        "one's formula, units and the models it applies to. A criterion may also be a",
        "torch callable ``f(output, y)``, or a list of names and callables.",
    ],
    "sklearn_puma.SUPPORTED_ESTIMATORS": [
        "The estimators :class:`~sklearn_puma.PumaPatcher` can value and patch.",
        "",
        "Any other estimator, or a setting PUMA cannot differentiate, raises",
        ":class:`~sklearn_puma.UnsupportedEstimatorError`, whose message lists these.",
        ":doc:`/guide/networks` says what a network's values can promise.",
    ],
}


def _document_constants(app, what, name, obj, options, lines):
    if what == "data" and name in _DATA_DOCS:
        lines[:] = list(_DATA_DOCS[name])


def setup(app):
    app.connect("autodoc-skip-member", _skip_inherited_api)
    # Before numpydoc (priority 500), which renders and validates the docstring.
    app.connect("autodoc-process-docstring", _document_constants, priority=400)
