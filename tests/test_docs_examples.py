"""The code shown to users runs and shows what it claims: README.md and the docstring examples.

README.md: every ``python`` block runs, in order, in one namespace, as a reader goes through the
page (a later block uses the names of an earlier one). The few names a block takes from the reader's
own code (a text ``model`` with an ``embedding``, its token ``ids``, a ``loader`` of ``(x, y)``
batches) are small stand-ins defined here. A bare expression whose comment starts with a shape,
``hess.shape  # torch.Size([4, 10, 10])`` or ``tokens.shape  # (B, T, T)``, must have that shape.
Every argument written as ``name=`` in README's inline code must be a parameter of some public
callable, and every ``module.name`` it cites must exist.

Docstrings: every public function and class (``captum_smoothhess.__all__`` and the ``__all__`` of
every public module; result types aside) has an ``Examples`` block, which the suite runs as a
doctest (``pytest captum_smoothhess tests``, ``--doctest-modules``).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import io
import pkgutil
import re
import tokenize
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import matplotlib
import pytest
import torch

import captum_smoothhess

matplotlib.use("Agg")
import matplotlib.pyplot as plt

README = Path(__file__).resolve().parent.parent / "README.md"
PUBLIC_MODULES = sorted(
    f"captum_smoothhess.{m.name}"
    for m in pkgutil.iter_modules(captum_smoothhess.__path__)
    if not m.name.startswith("_") and m.name != "demo"
)

# ``x.shape  # torch.Size([4, 10, 10])`` or ``x.shape  # (B, T, T)``: the claimed shape.
_SHAPE_COMMENT = re.compile(r"#\s*(torch\.Size\(\[[\d,\s]*\]\)|\((?:\s*\w+\s*,)+\s*\w*\s*\))")
_FENCE = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)
_ANY_FENCE = re.compile(r"^ *```.*?^ *```", re.S | re.M)


# ---------------------------------------------------------------------------------------------
# README code blocks


def python_blocks(text: str) -> List[Tuple[int, str]]:
    """The ``python`` fenced blocks of a Markdown text: (line of the first code line, code)."""
    blocks = []
    for match in _FENCE.finditer(text):
        indent = len(match.group(1))
        code = "\n".join(line[indent:] for line in match.group(2).splitlines())
        first = text.count("\n", 0, match.start(2)) + 1
        blocks.append((first, code + "\n"))
    return blocks


def _shape_claims(code: str) -> Dict[int, str]:
    claims = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT and (m := _SHAPE_COMMENT.match(tok.string)):
            claims[tok.start[0]] = m.group(1)
    return claims


def run_block(code: str, namespace: Dict[str, Any], filename: str = "README.md", first_line: int = 1) -> None:
    """Run one block statement by statement; a bare expression with a shape comment is checked."""
    claims = _shape_claims(code)
    tree = ast.parse(code)
    for stmt in tree.body:
        claim = claims.get(stmt.end_lineno or stmt.lineno) if isinstance(stmt, ast.Expr) else None
        ast.increment_lineno(stmt, first_line - 1)  # tracebacks point into the README
        if claim is None:
            exec(compile(ast.Module([stmt], type_ignores=[]), filename, "exec"), namespace)
            continue
        value = eval(compile(ast.Expression(stmt.value), filename, "eval"), namespace)
        expected = eval(claim, namespace)
        where = f"{filename}, line {stmt.lineno}: {ast.unparse(stmt.value)}"
        assert tuple(value) == tuple(expected), f"{where} is {tuple(value)}, the comment says {claim}"


class _TextModel(torch.nn.Module):
    """Stand-in for the reader's text model: token ids (B, T) -> two logits, with an ``embedding``."""

    def __init__(self, vocab: int, seq_len: int, width: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(seq_len * width, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids))


def stand_ins() -> Dict[str, Any]:
    """The names README's blocks take from the reader's own code."""
    gen = torch.Generator().manual_seed(0)
    n_batch, seq_len, width = 3, 6, 8
    # (x, y) batches for the README's ``net``: 10 features, 3 classes.
    data = torch.utils.data.TensorDataset(
        torch.randn(24, 10, generator=gen), torch.randint(0, 3, (24,), generator=gen)
    )
    return {
        "model": _TextModel(20, seq_len, width),
        "ids": torch.randint(1, 20, (n_batch, seq_len), generator=gen),
        "PAD_ID": 0,
        "B": n_batch,
        "T": seq_len,
        "E": width,
        "loader": torch.utils.data.DataLoader(data, batch_size=8),
    }


README_BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


class _Reader:
    """One namespace shared by the blocks, run in order (so one block can be run alone with -k)."""

    def __init__(self) -> None:
        self.namespace: Dict[str, Any] = stand_ins()
        self.done = 0

    def run_through(self, index: int) -> None:
        while self.done <= index:
            first, code = README_BLOCKS[self.done]
            self.done += 1
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.done)
                try:
                    run_block(code, self.namespace, "README.md", first)
                finally:
                    plt.close("all")


@pytest.fixture(scope="module")
def reader() -> _Reader:
    return _Reader()


def test_readme_has_python_blocks() -> None:
    assert len(README_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(README_BLOCKS)), ids=[f"line{f}" for f, _ in README_BLOCKS])
def test_readme_block_runs(reader: _Reader, index: int) -> None:
    reader.run_through(index)


def inline_code(text: str) -> List[str]:
    """The inline code spans of a Markdown text (fenced blocks left out; a span may wrap a line)."""
    return re.findall(r"`([^`]+)`", _ANY_FENCE.sub("", text))


def _public_callables() -> Iterator[Any]:
    names = [(captum_smoothhess, n) for n in captum_smoothhess.__all__]
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        names += [(module, n) for n in getattr(module, "__all__", ())]
    for owner, name in names:
        obj = getattr(owner, name)
        if inspect.isclass(obj):
            yield obj
            yield from (v for k, v in vars(obj).items() if callable(v) and not k.startswith("_"))
        elif callable(obj):
            yield obj


def test_readme_argument_names_exist() -> None:
    params = set()
    for obj in _public_callables():
        try:
            params |= set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            continue
    inline = inline_code(README.read_text(encoding="utf-8"))
    used = {m for code in inline for m in re.findall(r"(?<![\w.])([a-z_][a-z0-9_]*)=(?!=)", code)}
    assert used, "no `name=` arguments found in README.md"
    assert used <= params, f"README.md names arguments that no public callable has: {sorted(used - params)}"


def test_readme_cited_names_exist() -> None:
    inline = inline_code(README.read_text(encoding="utf-8"))
    modules = "|".join(m.rsplit(".", 1)[1] for m in PUBLIC_MODULES)
    cited = re.compile(rf"(?<![\w.])({modules})\.(?!py\b)([A-Za-z_][\w/]*)")  # not file names
    missing = []
    for code in inline:
        for module_name, names in cited.findall(code):
            module = importlib.import_module(f"captum_smoothhess.{module_name}")
            missing += [f"{module_name}.{n}" for n in names.split("/") if not hasattr(module, n)]
    assert not missing, f"README.md cites names that do not exist: {missing}"


# ---------------------------------------------------------------------------------------------
# Docstring examples of the public API (the suite runs them: `pytest captum_smoothhess tests` with
# --doctest-modules); here, that every public function and method class has some.


def _public_objects() -> Iterator[Tuple[str, Any]]:
    yield from ((f"captum_smoothhess.{n}", getattr(captum_smoothhess, n)) for n in captum_smoothhess.__all__)
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        yield from ((f"{module_name}.{n}", getattr(module, n)) for n in getattr(module, "__all__", ()))


def _is_record(obj: Any) -> bool:
    """A result type (a named tuple, a list of rows or a dataclass): its fields are documented, its
    examples are those of the function that returns it."""
    return inspect.isclass(obj) and (issubclass(obj, (tuple, list)) or dataclasses.is_dataclass(obj))


def test_public_functions_and_classes_have_examples() -> None:
    missing = sorted(
        {
            f"{obj.__module__}.{obj.__qualname__}"
            for _, obj in _public_objects()
            if (inspect.isroutine(obj) or inspect.isclass(obj))
            and not _is_record(obj)
            and ">>>" not in (inspect.getdoc(obj) or "")
        }
    )
    assert not missing, f"public names without an Examples block: {missing}"


# ---------------------------------------------------------------------------------------------
# The checks above catch what they are meant to catch


def test_checker_catches_a_wrong_shape_and_an_error() -> None:
    text = (
        "intro\n\n```python\nimport torch\nx = torch.zeros(2, 3)\nx.shape  # torch.Size([2, 3])\n```\n\n"
        "- item\n\n  ```python\n  x.shape  # (B, 4)\n  ```\n\n```python\nundefined_name\n```\n"
    )
    (l1, ok), (l2, wrong), (l3, raises) = python_blocks(text)
    assert (l1, l2, l3) == (4, 12, 16)
    namespace: Dict[str, Any] = {"B": 2}
    run_block(ok, namespace, "doc.md", l1)
    with pytest.raises(AssertionError, match=r"doc\.md, line 12: x\.shape is \(2, 3\)"):
        run_block(wrong, namespace, "doc.md", l2)
    with pytest.raises(NameError):
        run_block(raises, namespace, "doc.md", l3)
