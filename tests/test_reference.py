"""docs/reference.md stays complete and true, and the examples in docstrings stay runnable.

Complete: every public name of the package's modules (a module's `__all__`, else what its own
source defines, and for a package what it re-exports from itself), and every public member a
public class adds, has an entry: a bullet that starts with the name in backticks. True: every
`tg.`/`tinygrad_rnn.` name in backticks exists, and an entry's signature, where it gives one,
has the parameters (names, kinds and defaults) of the code.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import math
import os
import pathlib
import pkgutil
import re
import textwrap
from types import ModuleType
from typing import Any, Iterator

import numpy as np
import pytest

import tinygrad_rnn as tg

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
REFERENCE = os.path.join(ROOT, "docs", "reference.md")

# (how the reference spells the module, its import path). `tg.checkpoint` is the function, so the
# module of the same name is spelled in full.
MODULES = [
    ("tg", "tinygrad_rnn"),
    ("tg.nn", "tinygrad_rnn.nn"),
    ("tg.nn.functional", "tinygrad_rnn.nn.functional"),
    ("tg.nn.init", "tinygrad_rnn.nn.init"),
    ("tg.nn.utils", "tinygrad_rnn.nn.utils"),
    ("tg.nn.utils.rnn", "tinygrad_rnn.nn.utils.rnn"),
    ("tg.optim", "tinygrad_rnn.optim"),
    ("tg.optim.lr_scheduler", "tinygrad_rnn.optim.lr_scheduler"),
    ("tg.scan", "tinygrad_rnn.scan"),
    ("tg.bptt", "tinygrad_rnn.bptt"),
    ("tinygrad_rnn.checkpoint", "tinygrad_rnn.checkpoint"),
    ("tg.diagnostics", "tinygrad_rnn.diagnostics"),
    ("tg.testing", "tinygrad_rnn.testing"),
    ("tg.testing.strategies", "tinygrad_rnn.testing.strategies"),
    ("tg.io", "tinygrad_rnn.io"),
    ("tg.errors", "tinygrad_rnn.errors"),
    ("tg.primitive", "tinygrad_rnn.primitive"),
]
ENTRY = re.compile(r"^\s*- `((?:tg|tinygrad_rnn)(?:\.\w+)+)([^`]*)`", re.M)
MENTION = re.compile(r"`((?:tg|tinygrad_rnn)(?:\.\w+)+)")
DEFAULTS = {"np": np, "math": math, "inf": math.inf}  # what documented defaults may name


def _module(path: str) -> ModuleType:
    return importlib.import_module(path)


def _own_names(mod: ModuleType) -> list[str]:
    """Public names the module's source binds itself; a package also counts what it imports from
    its own submodules (its re-exports)."""
    tree = ast.parse(open(mod.__file__, encoding="utf-8").read())  # type: ignore[arg-type]
    is_package = os.path.basename(mod.__file__ or "") == "__init__.py"
    names: list[str] = []
    stack = list(tree.body)
    while stack:
        node = stack.pop(0)
        if isinstance(node, (ast.If, ast.Try)):
            stack.extend(node.body + node.orelse + getattr(node, "finalbody", []))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        elif isinstance(node, ast.ImportFrom) and is_package and node.level > 0:
            names += [a.asname or a.name for a in node.names]
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def public_names(mod: ModuleType) -> list[str]:
    names = getattr(mod, "__all__", None)
    return list(names) if names is not None else _own_names(mod)


def _ours(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "tinygrad_rnn"


def class_members(cls: type) -> list[str]:
    """Public members the class adds: its own and its private bases', minus overrides of a
    member a public base of ours already documents."""
    bases = [k for k in cls.__mro__[1:] if _ours(k) and not k.__name__.startswith("_")]
    documented = {n for k in bases for n in vars(k)}
    found: list[str] = []
    for k in cls.__mro__:
        if k is cls or (_ours(k) and k.__name__.startswith("_")):
            found += [n for n in vars(k) if not n.startswith("_") and n not in documented]
    return list(dict.fromkeys(found))


def expected() -> list[str]:
    """Every qualified name the reference must have an entry for. A class's members are listed
    under the first name it has in MODULES' order (tg.Primitive, not tg.primitive.Primitive)."""
    names: list[str] = []
    homes: set[int] = set()
    for prefix, path in MODULES:
        mod = _module(path)
        for n in public_names(mod):
            names.append(f"{prefix}.{n}")
            obj = getattr(mod, n)
            if isinstance(obj, type) and _ours(obj) and id(obj) not in homes:
                homes.add(id(obj))
                names += [f"{prefix}.{n}.{m}" for m in class_members(obj)]
    return names


def resolve(name: str) -> Any:
    """The object a reference name denotes; AttributeError/ImportError if there is none."""
    parts = name.split(".")
    if parts[0] == "tg":
        obj: Any = tg
        rest = parts[1:]
    else:  # the longest importable module path, then attributes
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        rest = parts[i:]
    for p in rest:
        obj = getattr(obj, p)
    return obj


def _reference() -> str:
    return open(REFERENCE, encoding="utf-8").read()


def _entries() -> list[tuple[str, str]]:
    return ENTRY.findall(_reference())


# ----------------------------------------------------------------------------- complete and true
def test_every_public_name_has_an_entry() -> None:
    have = {name for name, _ in _entries()}
    missing = [n for n in expected() if n not in have]
    assert not missing, f"docs/reference.md has no entry for: {missing}"


def test_entries_are_unique() -> None:
    names = [name for name, _ in _entries()]
    assert len(names) > 200
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_every_name_mentioned_exists() -> None:
    wrong = []
    for name in sorted(set(MENTION.findall(_reference()))):
        try:
            resolve(name)
        except (AttributeError, ImportError):
            wrong.append(name)
    assert not wrong, f"docs/reference.md names what does not exist: {wrong}"


def _documented(sig: str) -> list[tuple[str, str, Any]]:
    """(name, kind, default text or None) per parameter of a documented signature '(a, b=1)'."""
    args = ast.parse(f"def f{sig}: pass").body[0].args  # type: ignore[attr-defined]
    out: list[tuple[str, str, Any]] = []
    positional = args.posonlyargs + args.args
    pos_defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out += [(a.arg, "positional", d) for a, d in zip(positional, pos_defaults)]
    if args.vararg:
        out.append((args.vararg.arg, "*", None))
    out += [(a.arg, "keyword", d) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        out.append((args.kwarg.arg, "**", None))
    return [(n, k, None if d is None else ast.unparse(d)) for n, k, d in out]


KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
    inspect.Parameter.VAR_POSITIONAL: "*",
    inspect.Parameter.KEYWORD_ONLY: "keyword",
    inspect.Parameter.VAR_KEYWORD: "**",
}


def _signature_problem(name: str, sig: str) -> str | None:
    """Why the documented signature `sig` of `name` is not the code's, or None (also when the
    name does not exist: test_every_name_mentioned_exists reports that)."""
    try:
        obj = resolve(name)
    except (AttributeError, ImportError):
        return None
    if not callable(obj):
        return f"{name}{sig}: documented as callable, but it is a {type(obj).__name__}"
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return None  # a builtin without a signature: nothing to compare
    parent = resolve(name.rsplit(".", 1)[0])
    if isinstance(parent, type) and inspect.isfunction(obj) and params and \
            params[0].name == "self":
        params = params[1:]  # a method looked up on its class
    if [KINDS[p.kind] for p in params] == ["*", "**"]:
        return None  # a forwarding (*args, **kwargs): the documented one cannot be compared
    doc = _documented(sig)
    code = [(p.name, KINDS[p.kind], p.default) for p in params]
    if [(n, k) for n, k, _ in doc] != [(n, k) for n, k, _ in code]:
        return f"{name}{sig}: the code's parameters are {inspect.signature(obj)}"
    for (n, _, d), (_, _, c) in zip(doc, code):
        if (d is None) != (c is inspect.Parameter.empty):
            return f"{name}: parameter {n} has a default in one of code and reference only"
        if d is None:
            continue
        try:
            value = eval(d, dict(DEFAULTS))  # noqa: S307 - our own reference's text
        except Exception:  # noqa: BLE001 - e.g. a hypothesis strategy: its presence is enough
            continue
        if not (value is c or (type(value) is type(c) or isinstance(c, (int, float)))
                and value == c):
            return f"{name}: parameter {n} defaults to {c!r} in the code, {d} in the reference"
    return None


def test_signatures_match_the_code() -> None:
    problems = [p for name, rest in _entries() if rest.startswith("(")
                for p in [_signature_problem(name, rest[:_close(rest) + 1])] if p]
    assert not problems, "\n".join(problems)


def _close(text: str) -> int:
    """The index of the parenthesis that closes text[0]."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth == 0:
            return i
    raise AssertionError(f"unbalanced signature {text!r}")


def test_the_checks_catch_a_missing_and_a_false_entry() -> None:
    assert "tg.Tensor.backward" in expected() and "tg.Primitive.apply" in expected()
    assert "tg.primitive.Primitive.apply" not in expected()  # members under one name only
    assert "tg.nn.Linear.forward" not in expected()  # an override of Module.forward
    assert "tg.nn.RNNCell.initial_state" in expected()  # from the private _CellBase
    assert "tg.np" not in expected() and "tg.scan.Tensor" not in expected()
    assert _signature_problem("tg.concat", "(ts, axis=0, *, dim=None)") is None
    assert _signature_problem("tg.concat", "(ts, axis=1, *, dim=None)")
    assert _signature_problem("tg.concat", "(ts, dim=0)")
    assert _signature_problem("tg.Tensor.sum", "(axis=None, keepdims=False, *, dim=None, "
                              "keepdim=None)") is None
    with pytest.raises(AttributeError):
        resolve("tg.nn.NoSuchLayer")


# ----------------------------------------------------------------------------- docstring examples
def _modules() -> Iterator[ModuleType]:
    yield tg
    for info in pkgutil.walk_packages(tg.__path__, prefix="tinygrad_rnn."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def _docstrings(mod: ModuleType) -> Iterator[tuple[str, str]]:
    """(where, docstring) of the module and of what it defines: functions, classes, methods."""
    yield mod.__name__, mod.__doc__ or ""
    for n, obj in vars(mod).items():
        if getattr(obj, "__module__", None) != mod.__name__ or not callable(obj):
            continue
        yield f"{mod.__name__}.{n}", obj.__doc__ or ""
        for m, member in vars(obj).items() if isinstance(obj, type) else ():
            fn = getattr(member, "__func__", member)
            if callable(fn):
                yield f"{mod.__name__}.{n}.{m}", fn.__doc__ or ""


def _literal_blocks(doc: str) -> Iterator[str]:
    """The indented blocks after a paragraph ending in '::' (reST literal blocks)."""
    lines = textwrap.dedent("\n".join(doc.splitlines()[1:])).splitlines() + [""]
    lines = doc.splitlines()[:1] + lines
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        indent = len(line) - len(line.lstrip())
        block: list[str] = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            block.append(nxt)
        yield textwrap.dedent("\n".join(block))


def _examples() -> list[tuple[str, str]]:
    found = []
    for mod in _modules():
        for where, doc in _docstrings(mod):
            found += [(where, block) for block in _literal_blocks(doc)]
    return list(dict.fromkeys(found))


EXAMPLES = _examples()


@pytest.mark.parametrize("where,source", EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_docstring_example_runs(where: str, source: str, tmp_path: Any,
                                monkeypatch: Any) -> None:
    """Each example on its own, in a fresh namespace; the tests it defines are then called."""
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {"__name__": "__docstring__"}
    exec(compile(source, where, "exec"), scope)  # noqa: S102 - our own docstrings
    for name, obj in list(scope.items()):
        if name.startswith("test") and callable(obj):
            obj()


def test_docstring_examples_are_found() -> None:
    wheres = [w for w, _ in EXAMPLES]
    assert "tinygrad_rnn.testing" in wheres
    assert "tinygrad_rnn.testing.checks.gradcheck" in wheres


def test_doctests_pass() -> None:
    """`>>>` examples anywhere in the package (none today; they would be run here)."""
    finder, runner = doctest.DocTestFinder(exclude_empty=True), doctest.DocTestRunner()
    for mod in _modules():
        for test in finder.find(mod):
            runner.run(test)
    assert runner.failures == 0


def test_every_error_class_lives_in_errors_py() -> None:
    """Exceptions and warnings users catch are defined in tinygrad_rnn/errors.py (others
    re-export them); only control flow private to a module (the scan's Fallback, io's
    _Terminated) is defined elsewhere."""
    allowed = {("scan.py", "Fallback"), ("io.py", "_Terminated")}
    pkg = pathlib.Path(tg.__file__).parent
    found = []
    for path in pkg.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(
                        ("Error", "Exception", "Warning", "Interrupt"))
                    for b in node.bases):
                if (path.name, node.name) not in allowed:
                    found.append(f"{path.relative_to(pkg)}: {node.name}")
    assert found == []
