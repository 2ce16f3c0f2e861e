"""`Module`, `Parameter`, `ModuleList`, `Sequential`, `ModuleDict`: PyTorch's registration model
on top of our Tensor."""

from __future__ import annotations

import operator
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from ..engine import written
from ..errors import DTypeError
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor with requires_grad=True that Modules register; the data is copied."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True, dtype: Any = None) -> None:
        super().__init__(data, dtype=dtype)  # a copy; lists and numbers get tg.default_dtype
        if self.data.dtype.kind != "f":
            raise DTypeError(f"Parameter: needs floating-point data, got dtype {self.data.dtype}")
        self.requires_grad = requires_grad

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    @property  # type: ignore[override]
    def data(self) -> np.ndarray:
        """The numpy array."""
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        # a float64 array assigned to one parameter of a float32 model would make every step
        # that uses it float64: converting a model is Module.to(dtype), all at once
        old = self._data
        if isinstance(value, np.ndarray) and value.dtype != old.dtype:
            raise DTypeError(f"Parameter: assigning {value.dtype} data to a {old.dtype} "
                             f"parameter of shape {old.shape}; convert it with "
                             f".astype(np.{old.dtype.name}), or convert the whole model with "
                             f"module.to(np.{value.dtype.name})")
        Tensor.data.fset(self, value)  # type: ignore[attr-defined]


def _as_buffer(value: Any, error: str) -> Tensor | None:
    """A buffer's value: a Tensor as is, a numpy array copied into a Tensor, or None."""
    if value is None or isinstance(value, Tensor):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return Tensor(value)  # copied: load_state_dict writes into it in place
    raise TypeError(error + " (a Tensor, a numpy array or None is required)")


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of layers: Parameters and Modules assigned as attributes are registered."""

    training: bool
    _parameters: dict[str, Parameter]
    _modules: dict[str, Module]
    _buffers: dict[str, Tensor | None]
    _non_persistent_buffers: set[str]

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before "
                                 f"assigning attributes")
        params, mods = self.__dict__["_parameters"], self.__dict__["_modules"]
        buffers = self.__dict__["_buffers"]
        if name in buffers and not isinstance(value, (Parameter, Module)):
            # a buffer stays a buffer when reassigned (as PyTorch); arrays become Tensors
            value = _as_buffer(value, f"{type(self).__name__}: cannot assign "
                                      f"{type(value).__name__} to buffer {name!r}")
            buffers[name] = value
            object.__setattr__(self, name, value)
            return
        # a name that stays a Parameter (Module) keeps its place in the order, as in PyTorch
        if not isinstance(value, Parameter):
            params.pop(name, None)
        if not isinstance(value, Module):
            mods.pop(name, None)
        self._forget_buffer(name)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            mods[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._forget_buffer(name)
        object.__delattr__(self, name)

    def _forget_buffer(self, name: str) -> None:
        self._buffers.pop(name, None)
        self._non_persistent_buffers.discard(name)

    def _check_new_name(self, name: Any, kind: str, registry: str) -> None:
        """PyTorch's checks on a name given to register_buffer / add_module; `registry` is the
        dict (`_buffers` / `_modules`) whose names may be registered again."""
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before "
                                 f"registering a {kind}")
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
        if "." in name:
            raise KeyError(f"{kind} name can't contain '.', got {name!r}")
        if name == "":
            raise KeyError(f"{kind} name can't be an empty string")
        if hasattr(self, name) and name not in self.__dict__[registry]:
            raise KeyError(f"attribute {name!r} already exists in {type(self).__name__}")

    def register_buffer(self, name: str, tensor: Any, persistent: bool = True) -> None:
        """Register state that is not a parameter (no gradient, not in `parameters()`): a Tensor
        (kept as is), a numpy array (copied into a new Tensor) or None. Persistent buffers are
        saved and loaded by `state_dict()` / `load_state_dict()`."""
        self._check_new_name(name, "buffer", "_buffers")
        if isinstance(tensor, Parameter):
            raise TypeError(f"register_buffer: {name!r} is a Parameter; assign it as an "
                            f"attribute to register it as a parameter")
        value = _as_buffer(tensor, f"register_buffer: cannot register {type(tensor).__name__} "
                                   f"as buffer {name!r}")
        self._buffers[name] = value
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)
        object.__setattr__(self, name, value)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register `module` under `name` (which may be any string without '.', e.g. "0")."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {type(module).__name__} is not a Module")
        self._check_new_name(name, "module", "_modules")
        setattr(self, name, module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every descendant, depth first in registration order (no repeats)."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                continue
            seen.add(id(m))
            yield name, m
            children = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items()]
            stack.extend(reversed(children))

    def modules(self) -> Iterator[Module]:
        return (m for _, m in self.named_modules())

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct submodules in registration order; one registered twice appears once."""
        seen: set[int] = set()
        for name, m in self._modules.items():
            if id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator[Module]:
        return (m for _, m in self.named_children())

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call `fn` on every submodule, children first, then on self (as PyTorch; e.g.
        `model.apply(init_fn)`). Returns self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def _named_members(self, prefix: str, table: Callable[[Module], Iterable[tuple[str, Any]]]
                       ) -> Iterator[tuple[str, Any]]:
        """(dotted name, member) over `table(m)` of every module; a shared member appears once."""
        seen: set[int] = set()
        for mname, m in self.named_modules(prefix):
            for name, v in table(m):
                if v is not None and id(v) not in seen:
                    seen.add(id(v))
                    yield (f"{mname}.{name}" if mname else name), v

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) in a deterministic order; a shared Parameter appears once."""
        return self._named_members(prefix, lambda m: m._parameters.items())

    def parameters(self) -> Iterator[Parameter]:
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(dotted name, buffer) of every registered buffer that is not None, persistent or not."""
        return self._named_members(prefix, lambda m: m._buffers.items())

    def buffers(self) -> Iterator[Tensor]:
        return (b for _, b in self.named_buffers())

    def _named_state(self) -> Iterator[tuple[str, Tensor]]:
        """What `state_dict` holds, in PyTorch's order: each module's parameters, then its
        persistent buffers, then its submodules. Unlike `named_parameters`, a tied tensor (or a
        shared module) is listed under every name it has, as PyTorch: a dict saved by PyTorch
        from a model with tied embeddings holds both names."""
        stack: list[tuple[str, Module, frozenset[int]]] = [("", self, frozenset())]
        while stack:
            prefix, m, above = stack.pop()  # above: the ids of m's ancestors (no cycles)
            for k, v in m._parameters.items():
                if v is not None:
                    yield prefix + k, v
            for k, b in m._buffers.items():
                if b is not None and k not in m._non_persistent_buffers:
                    yield prefix + k, b
            inside = above | {id(m)}
            stack.extend(reversed([(f"{prefix}{k}.", c, inside) for k, c in m._modules.items()
                                   if c is not None and id(c) not in inside]))

    def to(self, dtype: Any) -> Module:
        """Convert every parameter and floating-point buffer to `dtype` (e.g. np.float64 for a
        gradcheck), in place; gradients are dropped. Returns self."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise DTypeError(f"{type(self).__name__}.to: needs a floating-point dtype, got {dtype}")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p._data.dtype != dtype:
                    Tensor.data.fset(p, p._data.astype(dtype))  # type: ignore[attr-defined]
                    p.grad = None
            for b in m._buffers.values():
                if b is not None and b._data.dtype.kind == "f":
                    b.data = b._data.astype(dtype)
        return self

    def double(self) -> Module:
        """`to(np.float64)`."""
        return self.to(np.float64)

    def float(self) -> Module:  # noqa: A003 - PyTorch's name
        """`to(np.float32)`."""
        return self.to(np.float32)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """name -> a numpy copy of each parameter and persistent buffer; a tied tensor appears
        under each of its names (as PyTorch), each with its own copy."""
        return {name: t.data.copy() for name, t in self._named_state()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values into the parameters and persistent buffers. Every problem (missing or
        unexpected key, shape or dtype mismatch, a read-only array in the model, different values
        for two names of one tied tensor) is collected into one ValueError, and then nothing is
        changed."""
        own = dict(self._named_state())
        names: dict[int, list[str]] = {}  # a tensor's id -> its names (several when tied)
        for k, t in own.items():
            names.setdefault(id(t), []).append(k)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        if strict:
            for k in missing:
                given = [j for j in names[id(own[k])] if j in state_dict]
                problems.append(f"missing key {k!r}" + (f" (the same tensor as {given[0]!r}, "
                                                        f"which is given)" if given else ""))
            problems += [f"unexpected key {k!r}" for k in unexpected]
        values: dict[str, np.ndarray] = {}
        for k, p in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            v = np.asarray(v.data if isinstance(v, Tensor) else v)
            first = next(j for j in names[id(p)] if j in state_dict)
            if v.shape != p.shape:
                problems.append(f"{k!r}: shape {v.shape} in the state dict, {p.shape} in the "
                                f"model")
            elif v.dtype != p.dtype:
                problems.append(f"{k!r}: dtype {v.dtype} in the state dict, {p.dtype} in the "
                                f"model")
            elif first != k:  # tied: one tensor cannot take two values
                if first in values and not np.array_equal(values[first], v, equal_nan=True):
                    problems.append(f"{first!r} and {k!r} name one tied tensor but hold "
                                    f"different values; give them equal values (or only one)")
            elif not p.data.flags.writeable:
                problems.append(f"{k!r}: the model's array is read-only (its "
                                f"data.flags.writeable is False)")
            else:
                values[k] = v
        if problems:
            raise ValueError(f"load_state_dict for {type(self).__name__}: "
                             + "; ".join(problems) + ". Nothing was loaded.")
        for k, v in values.items():
            np.copyto(own[k].data, v)
            written(own[k].data)  # records that saved the old values must not backpropagate
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"  ({k}): " + repr(m).replace("\n", "\n  ") for k, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + ("\n" + "\n".join(lines) + "\n)" if lines else ")")


class ModuleList(Module):
    """A list of Modules, registered under the names "0", "1", ..."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList: can only hold Modules, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i: int) -> Any:
        items = list(self._modules.values())
        if isinstance(i, slice):
            return ModuleList(items[i])
        return items[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))


class Sequential(Module):
    """Modules called in a chain, `forward(x) = m_n(...m_1(x))`; registered under "0", "1", ...
    or under the keys of an OrderedDict given as the only argument."""

    def __init__(self, *modules: Module | OrderedDict[str, Module]) -> None:
        super().__init__()
        named = modules[0] if len(modules) == 1 and isinstance(modules[0], OrderedDict) else None
        for name, m in named.items() if named is not None else enumerate(modules):
            if not isinstance(m, Module):
                hint = " (names need an OrderedDict)" if isinstance(m, Mapping) else ""
                raise TypeError(f"Sequential: entry {name!r} is a {type(m).__name__}, not a "
                                f"Module{hint}")
            self.add_module(str(name), m)

    def __getitem__(self, idx: int | slice) -> Any:
        """The idx-th module; a slice gives a Sequential of the same modules under their names."""
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        idx = operator.index(idx)
        if not -len(items) <= idx < len(items):
            raise IndexError(f"Sequential: index {idx} is out of range for {len(items)} modules")
        return items[idx][1]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def append(self, module: Module) -> Sequential:
        """Add `module` at the end, under the name str(len(self))."""
        if not isinstance(module, Module):
            raise TypeError(f"Sequential: can only hold Modules, got {type(module).__name__}")
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x: Any) -> Any:
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleDict(Module):
    """Modules by name, registered in insertion order (names may not contain '.' nor shadow an
    attribute of the Module, e.g. "forward" or "keys")."""

    def __init__(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]] | None = None
                 ) -> None:
        super().__init__()
        if modules is not None:
            self.update(modules)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleDict: can only hold Modules, got {type(module).__name__} "
                            f"for key {key!r}")
        self.add_module(key, module)

    def __delitem__(self, key: str) -> None:
        if key not in self._modules:
            raise KeyError(key)
        delattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._modules))

    def keys(self) -> list[str]:
        return list(self._modules.keys())

    def values(self) -> list[Module]:
        return list(self._modules.values())

    def items(self) -> list[tuple[str, Module]]:
        return list(self._modules.items())

    def pop(self, key: str) -> Module:
        m = self[key]
        del self[key]
        return m

    def clear(self) -> None:
        for key in self.keys():
            del self[key]

    def update(self, modules: Mapping[str, Module] | Iterable[tuple[str, Module]]) -> None:
        """Add or replace entries from a mapping (in its order) or from (key, module) pairs."""
        if isinstance(modules, (Mapping, ModuleDict)):
            pairs: Iterable[Any] = modules.items()
        elif isinstance(modules, Iterable):
            pairs = modules
        else:
            raise TypeError(f"ModuleDict.update: needs a mapping or an iterable of (key, module) "
                            f"pairs, got {type(modules).__name__}")
        for j, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"ModuleDict.update: element #{j} should be a (key, module) "
                                 f"pair, got {pair!r}")
            self[pair[0]] = pair[1]
