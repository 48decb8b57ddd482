"""`record`: `dataclasses.dataclass` without compiling methods, for every record in preflight.

On Python 3.11 `@dataclass` compiles every method it adds (`__init__`, `__repr__`, `__eq__`,
`__hash__`, and `__setattr__`/`__delattr__` when frozen) from source text with `exec`: 1.5 to
10 million instructions a class (callgrind), 66 million for the 16 classes a warm re-check
imports (as much as everything else that re-check does beyond importing click and yaml,
`bench/bench_recheck.py`) and 33 million more in the modules a `sync` of an OCI lane imports.
`record` lets `dataclass` do its field processing and nothing else, then adds the same
methods as plain functions that walk the class's fields, made once per class without
compiling anything. `dataclasses.fields`, `replace`, `asdict` and
`is_dataclass` work unchanged; field options `default`, `default_factory`, `repr=False` and
`compare=False` are honoured, `__post_init__` is called, and a record may extend another
(its fields follow the base's, as with dataclasses). Not supported (refused when used):
`init=False` fields, `InitVar`, `kw_only`.

The methods are a few microseconds slower per instance than generated ones, which is nothing
next to the compile they save for the few hundred instances a check makes (5,000 lanes: about
20 ms of a second).
"""

from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, dataclass, fields
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def record(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
    """`@record` or `@record(frozen=True)`: a dataclass whose methods are not compiled."""

    def wrap(cls: type[T]) -> type[T]:
        cls = dataclass(cls, init=False, repr=False, eq=False)  # fields, __match_args__; no method compiled
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        params.init, params.repr, params.eq, params.frozen = True, True, True, frozen
        _add_methods(cls, frozen)
        return cls

    return wrap if cls is None else wrap(cls)


def _add_methods(cls: type, frozen: bool) -> None:
    own = fields(cls)
    for f in own:
        if not f.init or f.kw_only is True:
            raise TypeError(f"record {cls.__qualname__}: field {f.name!r} must be an ordinary __init__ argument")
    specs = tuple((f.name, f.default, f.default_factory) for f in own)
    names = frozenset(f.name for f in own)
    compared = tuple(f.name for f in own if f.compare)
    shown = tuple(f.name for f in own if f.repr)
    post_init = getattr(cls, "__post_init__", None)
    qualname = cls.__qualname__
    set_attr = object.__setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(specs):
            raise TypeError(f"{qualname}.__init__() takes {len(specs) + 1} positional arguments but {len(args) + 1} were given")
        for i, (name, default, factory) in enumerate(specs):
            if i < len(args):
                if name in kwargs:
                    raise TypeError(f"{qualname}.__init__() got multiple values for argument '{name}'")
                value = args[i]
            elif name in kwargs:
                value = kwargs.pop(name)
            elif default is not MISSING:
                value = default
            elif factory is not MISSING:
                value = factory()
            else:
                raise TypeError(f"{qualname}.__init__() missing 1 required positional argument: '{name}'")
            set_attr(self, name, value)
        if kwargs:
            raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument '{next(iter(kwargs))}'")
        if post_init is not None:
            self.__post_init__()

    def values(self: Any) -> tuple:
        return tuple(getattr(self, n) for n in compared)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    def __repr__(self: Any) -> str:
        return f"{qualname}({', '.join(f'{n}={getattr(self, n)!r}' for n in shown)})"

    methods: dict[str, Callable | None] = {"__init__": __init__, "__eq__": __eq__, "__repr__": __repr__}
    if frozen:
        def __setattr__(self: Any, name: str, value: Any) -> None:
            if type(self) is cls or name in names:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")
            set_attr(self, name, value)

        def __delattr__(self: Any, name: str) -> None:
            if type(self) is cls or name in names:
                raise FrozenInstanceError(f"cannot delete field {name!r}")
            object.__delattr__(self, name)

        def __hash__(self: Any) -> int:
            return hash(values(self))

        methods |= {"__setattr__": __setattr__, "__delattr__": __delattr__, "__hash__": __hash__}
    else:
        methods["__hash__"] = None  # as dataclass(eq=True): a mutable record is not hashable
    for name, fn in methods.items():
        if cls.__dict__.get(name) is not None:
            continue  # as dataclass does: a method the class defines itself is kept
        if fn is not None:
            fn.__qualname__ = f"{qualname}.{name}"
        setattr(cls, name, fn)
