"""preflight.record.record behaves as dataclasses.dataclass does, for the options it supports."""

from __future__ import annotations

import dataclasses

import pytest

from preflight.record import record


def pair(frozen: bool) -> tuple[type, type]:
    """The same class body under @dataclass and under @record."""

    def body(ns: dict) -> None:
        ns["__annotations__"] = {"name": "str", "size": "int | None", "tags": "list[str]", "origin": "str | None",
                                 "secret": "str | None"}
        ns["size"] = None
        ns["tags"] = dataclasses.field(default_factory=list)
        ns["origin"] = dataclasses.field(default=None, compare=False)
        ns["secret"] = dataclasses.field(default=None, repr=False)
        ns["__doc__"] = "A file."
        ns["__module__"] = __name__

    classes = []
    for deco in (dataclasses.dataclass(frozen=frozen), record(frozen=frozen)):
        ns: dict = {}
        body(ns)
        classes.append(deco(type("File", (), ns)))
    return classes[0], classes[1]


@pytest.mark.parametrize("frozen", [False, True])
def test_a_record_is_built_compared_and_shown_as_the_dataclass(frozen: bool) -> None:
    D, R = pair(frozen)
    for args, kwargs in [(("a",), {}), (("a", 3), {}), (("a",), {"size": 3, "tags": ["x"]}), ((), {"name": "b", "origin": "l:1"}),
                         (("a", 1, ["t"], "o", "s"), {})]:
        d, r = D(*args, **kwargs), R(*args, **kwargs)
        assert repr(r) == repr(d)
        assert dataclasses.asdict(r) == dataclasses.asdict(d)
        assert dataclasses.astuple(r) == dataclasses.astuple(d)
    assert R("a", 1, origin="x") == R("a", 1, origin="y")  # compare=False
    assert R("a", 1) != R("a", 2) and R("a") != D("a")  # another class is never equal
    assert R("a").tags is not R("a").tags  # a fresh default from the factory
    assert "secret" not in repr(R("a", secret="s"))
    assert [f.name for f in dataclasses.fields(R)] == [f.name for f in dataclasses.fields(D)]
    assert R.__match_args__ == D.__match_args__ and dataclasses.is_dataclass(R)
    r = dataclasses.replace(R("a", 1, ["t"]), size=2)
    assert (r.name, r.size, r.tags) == ("a", 2, ["t"]) and type(r) is R


@pytest.mark.parametrize("frozen", [False, True])
def test_a_record_refuses_the_arguments_the_dataclass_refuses(frozen: bool) -> None:
    D, R = pair(frozen)
    for args, kwargs in [((), {}), (("a", 1, [], None, None, "extra"), {}), (("a",), {"name": "b"}), (("a",), {"colour": 1})]:
        with pytest.raises(TypeError):
            D(*args, **kwargs)
        with pytest.raises(TypeError, match="__init__"):
            R(*args, **kwargs)


def test_a_frozen_record_cannot_change_and_hashes_by_value() -> None:
    D, R = pair(True)
    r = R("a", 1, ("t",), origin="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.size = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        del r.name
    R2 = pair(True)[1]
    assert hash(r) == hash(R("a", 1, ("t",), origin="y")) == hash(D("a", 1, ("t",))) and {r: 1}[R("a", 1, ("t",))] == 1
    assert hash(R2("a", 1, ("t",))) == hash(r)  # by value, as the dataclass hashes
    with pytest.raises(TypeError):
        hash(R("a"))  # a list in a field: unhashable, as with the dataclass
    assert R.__dataclass_params__.frozen and dataclasses.fields(R) == dataclasses.fields(R)


def test_a_mutable_record_is_unhashable_and_can_change() -> None:
    _, R = pair(False)
    r = R("a")
    r.size = 5
    assert r.size == 5
    with pytest.raises(TypeError):
        hash(r)


def test_post_init_runs_and_own_methods_are_kept() -> None:
    @record
    class Box:
        """A box."""

        width: int
        area: int = 0

        def __post_init__(self) -> None:
            self.area = self.width * self.width

        def __repr__(self) -> str:
            return "box"

    assert Box(3).area == 9 and repr(Box(3)) == "box" and Box(3) == Box(3)


def test_a_record_extends_another_as_a_dataclass_does() -> None:
    @dataclasses.dataclass
    class DBase:
        a: int
        b: int = 0

    @dataclasses.dataclass
    class DChild(DBase):
        c: int = 1

    @record
    class RBase:
        a: int
        b: int = 0

    @record
    class RChild(RBase):
        c: int = 1

    for args, kwargs in [((5,), {}), ((5, 6, 7), {}), ((), {"a": 1, "c": 3})]:
        d, r = DChild(*args, **kwargs), RChild(*args, **kwargs)
        assert dataclasses.astuple(r) == dataclasses.astuple(d) and repr(r).replace("RChild", "DChild") == repr(d)
    assert RChild(1) != RBase(1) and RChild(1) == RChild(1, 0, 1)
    assert [f.name for f in dataclasses.fields(RChild)] == ["a", "b", "c"]


def test_what_record_does_not_support_is_refused() -> None:
    with pytest.raises(TypeError, match="ordinary __init__ argument"):
        @record
        class Hidden:
            a: int = dataclasses.field(default=0, init=False)


def test_every_record_in_preflight_is_made_by_record() -> None:
    """One shape for records: no class in preflight's modules has methods compiled by
    @dataclass (their cost at import is what `record` exists to avoid)."""
    import importlib
    import pkgutil

    import preflight

    compiled = []
    for info in pkgutil.walk_packages(preflight.__path__, "preflight."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == info.name and "__dataclass_fields__" in vars(value):
                if getattr(vars(value).get("__init__"), "__code__", None) is not None and value.__init__.__code__.co_filename == "<string>":
                    compiled.append(f"{info.name}.{value.__qualname__}")
    assert compiled == []
