"""Sphinx configuration of the API reference (``make docs``).

The reference is built offline from the docstrings: the pages under ``api/``
are written here at every build, one per public submodule found in the package
(``automodule`` with ``:members:``, which follows each module's ``__all__``),
plus a table of the package root's ``__all__``. A module or name added later
is picked up without editing this file. The tutorials are copied from
``tutorials/`` and rendered with their stored outputs; they are never executed.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sphinx.application import Sphinx

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not an installed copy

import captum_smoothhess  # noqa: E402

# The demo is an application (``captum-smoothhess demo``), not API.
EXCLUDED_MODULES = {"demo"}

project = "captum-smoothhess"
author = "captum-smoothhess developers"
copyright = "captum-smoothhess developers"
release = version = captum_smoothhess.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
# benchmarks.md and reproduction.md are written by the benchmark scripts;
# benchmarks.md has no title, so benchmarks_page.md includes it under one.
exclude_patterns = ["_build", "benchmarks.md", "**.ipynb_checkpoints"]

# Notebooks are rendered with the outputs stored in them, never run here.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autoclass_content = "class"
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of each attribute

html_theme = "alabaster"
html_title = f"captum-smoothhess {release}"
html_static_path: list[str] = []


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(captum_smoothhess.__path__):
        if not info.name.startswith("_") and info.name not in EXCLUDED_MODULES:
            names.append(f"captum_smoothhess.{info.name}")
    return sorted(names)


def _write_if_changed(path: Path, text: str) -> None:
    # Unchanged files keep their mtime, so incremental builds stay incremental.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def _root_table(modules: list[str]) -> tuple[list[str], list[str]]:
    """Split the root ``__all__`` into table entries and names documented here."""
    entries, local = [], []
    for name in captum_smoothhess.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(captum_smoothhess, name)
        if inspect.ismodule(obj):
            entries.append(obj.__name__)
            continue
        home = getattr(obj, "__module__", None)
        # A name defined in a private module may be documented by the public module exporting it.
        exporters = [m for m in modules if name in getattr(importlib.import_module(m), "__all__", ())]
        if home in modules:
            entries.append(f"{home}.{getattr(obj, '__qualname__', name)}")
        elif exporters:
            entries.append(f"{exporters[0]}.{name}")
        else:  # defined in the root or a private module: document it on the root page
            local.append(name)
    return entries, local


def _write_api_pages() -> None:
    api = DOCS / "api"
    api.mkdir(exist_ok=True)
    modules = _public_modules()
    for stale in set(api.glob("*.rst")) - {api / f"{m}.rst" for m in modules} - {api / "index.rst"}:
        stale.unlink()
    for module in modules:
        importlib.import_module(module)
        _write_if_changed(
            api / f"{module}.rst",
            _heading(module.rsplit(".", 1)[1], "=") + f"\n.. automodule:: {module}\n",
        )
    entries, local = _root_table(modules)
    lines = [
        _heading("API reference", "="),
        ".. automodule:: captum_smoothhess",
        "   :no-members:",
        "",
        _heading("The package root", "-"),
        "Every name in ``captum_smoothhess.__all__``, with where it is documented.",
        "",
        ".. currentmodule:: captum_smoothhess",
        "",
        ".. autosummary::",
        "",
        *(f"   ~{entry.removeprefix('captum_smoothhess.')}" for entry in entries),
        "",
    ]
    for name in local:
        kind = "autoclass" if inspect.isclass(getattr(captum_smoothhess, name)) else "autofunction"
        lines += [f".. {kind}:: captum_smoothhess.{name}", ""]
    lines += [_heading("Modules", "-"), ".. toctree::", "   :maxdepth: 1", ""]
    lines += [f"   {module}" for module in modules]
    _write_if_changed(api / "index.rst", "\n".join(lines) + "\n")


def _copy_tutorials() -> None:
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    sources = sorted((ROOT / "tutorials").glob("*.ipynb"))
    for stale in set(target.glob("*.ipynb")) - {target / s.name for s in sources}:
        stale.unlink()
    for source in sources:
        copy = target / source.name
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            shutil.copyfile(source, copy)


def _skip_namedtuple_fields(app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any) -> bool:
    # A NamedTuple's fields are described by its "Attributes:" section; the
    # generated "Alias for field number k" properties add nothing.
    return skip or (getattr(obj, "__doc__", None) or "").startswith("Alias for field number")


def setup(app: Sphinx) -> None:
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)


_write_api_pages()
_copy_tutorials()
