"""The optimiser base class: parameter groups, per-parameter state, step() and state dicts.

Optimisers work on numpy, outside the tape. `step()` updates each parameter's `.data` in place, in
the parameter's own dtype (float32 stays float32), never writes into `.grad`, and skips parameters
whose `.grad` is None. As in PyTorch the hyper-parameters live in `optimizer.param_groups` and are
read from there at every step, so a learning-rate scheduler (or `opt.param_groups[0]["lr"] = x`)
takes effect at the next step.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..engine import written
from ..mode import enable_grad
from ..errors import ShapeError
from ..tensor import Tensor

__all__ = ["Optimizer"]


def _number(value: Any, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {name} must be a number, got {type(value).__name__}")
    value = float(value)  # a Python float never upcasts a float32 array
    if math.isnan(value):
        raise ValueError(f"{owner}: {name} must not be nan")
    return value


def _non_negative(value: Any, name: str, owner: str) -> float:
    value = _number(value, name, owner)
    if value < 0:
        raise ValueError(f"{owner}: invalid {name} {value}, expected >= 0")
    return value


def _lerp_(a: np.ndarray, b: np.ndarray, weight: float, tmp: np.ndarray | None = None) -> None:
    """a = a + weight * (b - a) in place, in PyTorch's two-sided form (exact at weight 0 and 1);
    `tmp` (a's shape and dtype) is scratch space, if given."""
    tmp = np.subtract(b, a, out=tmp)
    if abs(weight) < 0.5:
        tmp *= weight
        a += tmp
    else:
        tmp *= 1 - weight
        np.subtract(b, tmp, out=a)


class Optimizer:
    """Base class: parameter groups, per-parameter state, `step()`, `state_dict()`.

    `param_groups` is a list of dicts as in PyTorch: each holds "params" (its Tensors) and the
    hyper-parameters, taken from `defaults` where the group does not set them. `state[p]` is the
    dict of parameter p (empty until its first update). For a hyper-parameter name, `opt.lr` reads
    the value all groups share and `opt.lr = x` sets it in every group.

    Writing your own optimiser: subclass, call `super().__init__(params, defaults)` with a dict of
    hyper-parameter defaults, and implement `update(param, grad, state, group)`; `step()`,
    parameter groups, `state_dict()` / `load_state_dict()` and the schedulers then work for it.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 defaults: Mapping[str, Any]) -> None:
        name = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{name}: params must be an iterable of Tensors (e.g. "
                            f"model.parameters()), got a single Tensor; wrap it in a list")
        self.defaults: dict[str, Any] = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}
        self._opt_called = False  # whether step() ran: schedulers warn when stepped before it
        items = list(params)
        if not items:
            raise ValueError(f"{name}: got an empty parameter list (did the model register its "
                             f"Parameters, or was the parameters() generator already consumed?)")
        if all(isinstance(item, Mapping) for item in items):
            for group in items:
                self.add_param_group(dict(group))  # type: ignore[call-overload]
        else:
            self.add_param_group({"params": items})

    @property
    def params(self) -> list[Tensor]:
        """Every parameter, group by group (the order of state-dict indices)."""
        return [p for group in self.param_groups for p in group["params"]]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group {"params": Tensors, hyper-parameter: value, ...}; unset values default."""
        name = type(self).__name__
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError(f"{name}: a param group must be a dict with a 'params' entry, got "
                            f"{type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        if not group["params"]:
            raise ValueError(f"{name}: param group {len(self.param_groups)} has no parameters")
        seen = {id(p) for p in self.params}
        start = len(seen)
        for i, p in enumerate(group["params"], start=start):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: params must be Tensors, item {i} is a "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{name}: param {i} (shape {p.shape}) is not a leaf tensor; "
                                 f"optimise leaves such as nn.Parameter")
            if p.dtype.kind != "f":
                raise TypeError(f"{name}: param {i} has dtype {p.dtype}; only floating-point "
                                f"tensors can be optimised")
            if id(p) in seen:
                raise ValueError(f"{name}: param {i} (shape {p.shape}) appears more than once; "
                                 f"it would be updated twice per step")
            seen.add(id(p))
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate a group's hyper-parameters, normalising them in place (numbers to float)."""

    # ------------------------------------------------------------------ hyper-parameters
    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: `opt.lr` for a hyper-parameter name
        defaults = self.__dict__.get("defaults")
        if defaults is None or name not in defaults:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        values = [group[name] for group in self.__dict__["param_groups"]]
        if any(v != values[0] for v in values[1:]):
            raise AttributeError(f"{type(self).__name__}: the param groups have different "
                                 f"{name} values {values}; read param_groups[i][{name!r}]")
        return values[0]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__.get("defaults", ()):
            groups = [{**group, name: value} for group in self.param_groups]
            for group in groups:
                self._check_group(group)  # all or nothing
            for group, checked in zip(self.param_groups, groups):
                group[name] = checked[name]
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ stepping
    def zero_grad(self) -> None:
        """Set every parameter's `.grad` to None (the next backward starts from scratch)."""
        for p in self.params:
            p.grad = None

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient. `closure`, if given, re-evaluates the
        model and returns the loss (called first, with recording enabled); step returns it."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        todo = self._checked_grads()
        self._opt_called = True
        for p, g, group in todo:
            self.update(p.data, g, self.state.setdefault(p, {}), group)
            written(p.data)  # a record that saved the old values must refuse backward
        return loss

    def _checked_grads(self) -> list[tuple[Tensor, np.ndarray, dict[str, Any]]]:
        """(param, grad, group) for every param with a grad, each grad a read-only array in its
        param's dtype, after checking them all: a bad one raises before any param or state is
        changed (a step is all or nothing), naming the param by its index."""
        name = type(self).__name__
        todo = []
        for i, (p, group) in enumerate((p, group) for group in self.param_groups
                                       for p in group["params"]):
            if p.grad is None:
                continue
            g = np.asarray(p.grad)
            where = f"{name}.step: param {i} (shape {p.data.shape})"
            if g.shape != p.data.shape:
                raise ShapeError(f"{where} has a grad of shape {g.shape}; nothing was updated")
            if g.dtype.kind not in "fiub":
                raise TypeError(f"{where} has a grad of dtype {g.dtype}; nothing was updated")
            if not p.data.flags.writeable:
                raise ValueError(f"{where} is read-only (its data.flags.writeable is False); "
                                 f"nothing was updated")
            g = g.astype(p.data.dtype, copy=False).view()  # read-only: it may be p.grad itself
            g.flags.writeable = False
            todo.append((p, g, group))
        return todo

    def update(self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any],
               group: dict[str, Any]) -> None:
        """Change the array `param` (a parameter's `.data`) in place from its gradient.

        `grad` is read-only and already in param's dtype; `state` is this parameter's dict, empty
        at its first update, for arrays of param's shape and numbers (what `state_dict` saves);
        `group` is its param group: read the hyper-parameters (group["lr"], ...) from it."""
        raise NotImplementedError(f"{type(self).__name__} must implement update(param, grad, "
                                  f"state, group)")

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout, with copies: {"state": {index: {name: array or number}},
        "param_groups": [{hyper-parameter: value, ..., "params": [index, ...]}]}, where index
        counts the parameters group by group. `tg.save` writes it (flattened to dotted keys)."""
        index = {id(p): i for i, p in enumerate(self.params)}
        state = {index[id(p)]: {k: copy.deepcopy(v) for k, v in s.items()}
                 for p, s in self.state.items() if s}
        groups = []
        for group in self.param_groups:
            saved = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            saved["params"] = [index[id(p)] for p in group["params"]]
            groups.append(saved)
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what `state_dict()` returned, or its flat form read back by `tg.load` (keys
        "state.<index>.<name>", "param_groups.<i>.<name>"). Group hyper-parameters are replaced by
        the saved ones, parameters matched by position. Every problem (group or parameter count,
        missing or unexpected key, state shape) goes into one ValueError; then nothing changes."""
        name = type(self).__name__
        problems: list[str] = []
        saved_state, saved_groups = _nested(state_dict, problems)
        if saved_groups is not None and len(saved_groups) != len(self.param_groups):
            problems.append(f"'param_groups': {len(saved_groups)} groups saved, the optimizer "
                            f"has {len(self.param_groups)}")
        if problems or saved_groups is None:
            raise ValueError(f"{name}.load_state_dict: " + "; ".join(problems)
                             + ". Nothing was loaded.")
        by_saved_index: dict[int, Tensor] = {}
        groups = []
        for j, (saved, own) in enumerate(zip(saved_groups, self.param_groups)):
            groups.append(self._loaded_group(j, saved, own, by_saved_index, problems))
        state = {}
        for key, entries in saved_state.items():
            where = f"state.{key}"
            try:
                p = by_saved_index[_index(key)]
            except (KeyError, ValueError):
                problems.append(f"{where!r}: no parameter has this index (saved indices: "
                                f"{sorted(by_saved_index)})")
                continue
            if not isinstance(entries, Mapping):
                problems.append(f"{where!r}: expected a dict of name -> value, got "
                                f"{type(entries).__name__}")
                continue
            state[p] = {k: _state_value(v, p, f"{where}.{k}", problems)
                        for k, v in entries.items()}
        if problems:
            raise ValueError(f"{name}.load_state_dict: " + "; ".join(problems)
                             + ". Nothing was loaded.")
        for own, group in zip(self.param_groups, groups):
            own.clear()  # the same dict objects: references to a group stay valid
            own.update(group)
        self.state = state

    def _loaded_group(self, j: int, saved: Any, own: dict[str, Any],
                      by_saved_index: dict[int, Tensor], problems: list[str]) -> dict[str, Any]:
        """The group j to install: the saved hyper-parameters (typed like the current ones)
        with the current parameters; records the saved index of each parameter."""
        where = f"param_groups.{j}"
        if not isinstance(saved, Mapping):
            problems.append(f"{where!r}: expected a dict, got {type(saved).__name__}")
            return own
        missing = [f"missing key {where + '.' + k!r}" for k in self.defaults if k not in saved]
        problems.extend(missing)
        try:
            indices = [_index(i) for i in np.asarray(saved["params"]).reshape(-1).tolist()]
        except KeyError:
            problems.append(f"missing key {where + '.params'!r}")
            indices = []
        except (TypeError, ValueError):
            problems.append(f"{where + '.params'!r}: expected a list of parameter indices")
            indices = []
        if len(indices) != len(own["params"]):
            problems.append(f"{where + '.params'!r}: {len(indices)} parameters saved, the "
                            f"optimizer's group {j} has {len(own['params'])}")
        elif len(set(indices) | set(by_saved_index)) != len(indices) + len(by_saved_index):
            problems.append(f"{where + '.params'!r}: a parameter index occurs twice")
        else:
            by_saved_index.update(zip(indices, own["params"]))
        group = {k: _like(v, own.get(k)) for k, v in saved.items() if k != "params"}
        group["params"] = own["params"]
        try:
            if not missing:
                self._check_group(group)
        except (TypeError, ValueError) as e:
            problems.append(f"{where!r}: {e}")
        return group


def _index(key: Any) -> int:
    """A parameter index from an int or its decimal string (flat keys are strings)."""
    if isinstance(key, (bool, np.bool_)):
        raise ValueError(key)
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, str) and key.isdecimal():
        return int(key)
    raise ValueError(key)


def _nested(state_dict: Mapping[str, Any],
            problems: list[str]) -> tuple[Mapping[Any, Any], list[Any] | None]:
    """(state, param_groups) from the nested form or from the flat dotted-key form."""
    if not isinstance(state_dict, Mapping):
        problems.append(f"expected a dict, got {type(state_dict).__name__}")
        return {}, None
    if "param_groups" in state_dict:  # nested, as state_dict() returns it
        problems.extend(f"unexpected key {k!r}" for k in state_dict
                        if k not in ("state", "param_groups"))
        groups = state_dict["param_groups"]
        state = state_dict.get("state", {})
        if not isinstance(groups, (list, tuple)):
            problems.append(f"'param_groups': expected a list, got {type(groups).__name__}")
            return {}, None
        if not isinstance(state, Mapping):
            problems.append(f"'state': expected a dict, got {type(state).__name__}")
            return {}, None
        return state, list(groups)
    flat_state: dict[str, dict[str, Any]] = {}
    flat_groups: dict[int, dict[str, Any]] = {}
    for key, value in state_dict.items():
        head, _, rest = str(key).partition(".")
        index, _, name = rest.partition(".")
        if head == "state" and index and name:
            flat_state.setdefault(index, {})[name] = value
        elif head == "param_groups" and index.isdecimal() and name:
            flat_groups.setdefault(int(index), {})[name] = value
        else:
            problems.append(f"unexpected key {key!r}")
    if not flat_groups:
        problems.append("missing key 'param_groups' (or flat keys 'param_groups.<i>.<name>'; "
                        "from a checkpoint file pass tg.io.subdict(checkpoint, 'optimizer'))")
        return {}, None
    if sorted(flat_groups) != list(range(len(flat_groups))):
        problems.append(f"'param_groups': groups {sorted(flat_groups)} saved, expected 0.."
                        f"{len(flat_groups) - 1}")
        return {}, None
    return flat_state, [flat_groups[j] for j in range(len(flat_groups))]


def _like(value: Any, template: Any) -> Any:
    """A loaded hyper-parameter as a Python value: an array read back by tg.load takes the type
    of the current value (bool, int, float, tuple); other values are copied as they are."""
    if not isinstance(value, (np.ndarray, np.generic)):
        return copy.deepcopy(value)
    value = np.asarray(value)
    if isinstance(template, tuple):
        return tuple(value.reshape(-1).tolist())
    if value.ndim == 0:
        item = value.item()
        if isinstance(template, bool):
            return bool(item)
        if isinstance(template, float):
            return float(item)
        return item
    return value.tolist()


def _state_value(value: Any, p: Tensor, where: str, problems: list[str]) -> Any:
    """A loaded state entry: arrays must have the parameter's shape (floats are cast to its
    dtype, as PyTorch does); a 0-d array becomes a number, except the state of a 0-d parameter."""
    if isinstance(value, Tensor):
        value = value.data
    if not isinstance(value, (np.ndarray, np.generic)):
        return copy.deepcopy(value)
    value = np.asarray(value)
    if value.ndim == 0 and not (p.ndim == 0 and value.dtype.kind == "f"):
        return value.item()
    if value.shape != p.shape:
        problems.append(f"{where!r}: shape {value.shape} in the state dict, {p.shape} for the "
                        f"parameter")
        return None
    if value.dtype.kind == "f":
        return value.astype(p.dtype)  # always a copy: later updates never write into `value`
    return value.copy()
