"""Sphinx configuration: the cmapdask documentation site.

Build (warnings are errors; every tutorial notebook is executed):
``python3 -m sphinx -W --keep-going -b html docs docs/_build/html``
"""

from __future__ import annotations

import os
import sys

# generated pages (the command line, configuration keys) come from the code itself
sys.path.insert(0, os.path.abspath("."))
import _generate  # noqa: E402

import cmapdask  # noqa: E402

_generate.write_all()

project = "cmapdask"
author = "the cmapdask developers"
copyright = "the cmapdask developers; the specification restates the Broad Institute's methods"
release = cmapdask.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 copied into the site and loaded from it: formulas render offline
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "README.md", "ALGORITHMS.md", "errors.md"]
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# options are copied as typed: no en dash for "--", no curly quotes
smartquotes = False

# Tutorials run during the build, on small synthetic data; any error fails the build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 600
nb_execution_show_tb = True
nb_merge_streams = True

autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

html_theme = "pydata_sphinx_theme"
html_title = f"cmapdask {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path = ["_static"]
html_css_files = ["cmapdask.css"]
