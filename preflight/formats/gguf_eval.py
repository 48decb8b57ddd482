"""Runs llama.cpp's model loader, as read from its source, over one GGUF's key/values and tensor infos.

gguf_programs.functions() holds llama.cpp's own load path as programs (ops/gen-gguf-arch.py reads
them from the C++): `llama_model_base::load_hparams` with the architecture's `load_arch_hparams`, the
architecture's `load_arch_tensors` followed by the generic pass of `load_tensors`, and the graph
constructor's assertions. This module is the one evaluator of those programs. It derives every
hyper-parameter as llama.cpp does (defaults, `get_key_or_arr` per-layer arrays, `n_embd / n_head`
when `attention.key_length` is absent, ...), asks for every tensor with the shape llama.cpp asks
for, and reports what llama.cpp would throw or assert, in its own words.

What it cannot know (a value it cannot derive, a statement the reader could not follow) is
*unknown*: an expression with an unknown part is unknown; a branch on an unknown condition is
taken both ways, "maybe", and what it writes becomes unknown afterwards; a failure found on a
maybe-path is not reported (it only ends that path). So every failure reported is one llama.cpp
meets on every path the file allows: never a false alarm from what was not understood. When a
path fails, the other branch is run again as certain (if llama.cpp did not take the failing path,
it took the other).

`run()` returns the first failure of each stage llama.cpp runs (it stops at the first), and,
when the tensor stage was followed to the end, the file's tensors no created tensor accounts for
("wrong number of tensors").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import field
from functools import lru_cache
from typing import NamedTuple

import re

from preflight.formats import gguf_arch as A
from preflight.formats import gguf_programs

from ..record import record


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "?"

    def __bool__(self) -> bool:
        raise TypeError("truth of an unknown value")


UNK = _Unknown()

# GGUF value type ids and the C types llama_model_loader::get_key accepts for each.
_GGUF_OF = {"uint8_t": 0, "int8_t": 1, "uint16_t": 2, "int16_t": 3, "uint32_t": 4, "int32_t": 5, "float": 6, "bool": 7,
            "std::string": 8, "uint64_t": 10, "int64_t": 11, "llama_pooling_type": 4, "llama_swa_type": 4,
            "llama_expert_gating_func_type": 4}
_TYPE_NAMES = ("u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str", "arr", "u64", "i64", "f64")
NOT_REQUIRED, DUPLICATED, SKIP = 1, 2, 4
ALLOW_RESHAPE = 16
MAX_STEPS = 100_000  # statements per run; a real loader takes a few thousand per hundred layers
MAX_DEPTH = 64


class LoadError(Exception):
    """What llama.cpp throws or asserts on a certain path."""

    def __init__(self, kind: str, message: str, *, key: str = "", tensor: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.kind, self.message, self.key, self.tensor, self.detail = kind, message, key, tensor, detail


class _Dead(Exception):
    """A maybe-path that fails (llama.cpp, had it taken it, would refuse the file); says why."""


class _GiveUp(Exception):
    """The program cannot be followed further (an unknown loop bound, the step budget)."""


class Struct(dict):
    """A C++ object: llama_model, llama_layer, llama_hparams. Missing members read as `default`."""

    __slots__ = ("default", "kind")

    def __init__(self, kind: str, default: object) -> None:
        super().__init__()
        self.kind, self.default = kind, default

    def read(self, name: str) -> object:
        if name in self:
            return self[name]
        if self.kind in ("model", "layer"):
            if name in A.LAYER_STRUCTS and self.kind == "layer":
                sub = self[name] = Struct("layer", None)
                return sub
            return None if name in A.TENSOR_MEMBERS else UNK
        return self.default


class Tensor:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


class Closure:
    __slots__ = ("params", "body", "scopes", "levels", "this")

    def __init__(self, params: list, body: list, scopes: list, levels: list, this: Struct) -> None:
        self.params, self.body, self.scopes, self.levels, self.this = params, body, scopes, levels, this


@record
class Created:
    """How the loader asked for one tensor of the file."""

    ok: bool = False  # asked for with a shape that fits (or one that cannot be told), on some path
    certain: bool = False
    wrong: list[str] = field(default_factory=list)  # "expected [...]" of maybe-paths whose shape does not fit


@record
class Outcome:
    hparams: LoadError | None = None
    tensors: LoadError | None = None
    graph: LoadError | None = None
    unused: list[str] = field(default_factory=list)  # file tensors no path creates (complete runs only)
    complete: bool = False  # the tensor stage was followed to the end with nothing unknown that may create tensors
    followed: bool = False  # the hyper-parameters were derived (the tensor stage ran)
    values: dict[str, object] = field(default_factory=dict)  # a few derived hyper-parameters, for messages
    fault: str | None = None  # the evaluator itself failed (never expected; the run then finds nothing)
    machine: Machine | None = field(default=None, repr=False)


@lru_cache(maxsize=None)
def _function(name: str) -> tuple[list[str], list] | None:
    text = gguf_programs.functions().get(name)
    return None if text is None else json.loads(text)


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _convert(ctype: str | None, v: object) -> object:
    """The value as the C type of what it is stored in."""
    if v is UNK or ctype is None or v is None or isinstance(v, (Tensor, Struct, Closure, list, str)):
        return v
    if ctype == "bool":
        return bool(v)
    if ctype == "float":
        return float(v)  # type: ignore[arg-type]
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return UNK
        v = int(v)
    if not isinstance(v, int):
        return v
    if ctype == "uint32_t":
        return v & 0xFFFFFFFF
    if ctype == "int32_t":
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v >= 1 << 31 else v
    if ctype == "uint64_t":
        return v & 0xFFFFFFFFFFFFFFFF
    return v


def _fmt_shape(dims: list | tuple) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


class Machine:
    """One run of the loader programs over one file."""

    def __init__(self, arch: str, meta: Mapping[str, object], kv_types: Mapping[str, tuple[int, int | None]],
                 tensors: Mapping[str, tuple[int, ...]], n_vocab: object, n_token_types: object) -> None:
        self.arch = arch
        self.chain = A.ARCH_CLASSES[arch]
        self.meta, self.kv_types, self.tensors = meta, kv_types, tensors
        self.n_vocab, self.n_token_types = n_vocab, n_token_types
        self.hp = Struct("hparams", UNK)
        for name, spec in A.HPARAMS.items():
            self.hp[name] = self._init_field(spec)
        self.hp["vocab_only"] = False
        self.hp["no_alloc"] = False
        self.model = Struct("model", None)
        self.model.update(hparams=self.hp, arch=arch, layers=[])
        self.maybe = 0
        self.steps = 0
        self.depth = 0
        self.scopes: list[dict] = []
        self.levels: list[int] = []
        self.this: Struct = self.model
        self.retval: object = None
        self.ret_maybe = 0
        self.loop_maybe: list[list[int]] = []
        self.journal: list[tuple] = []
        self.created: dict[str, Created] = {}
        self.incomplete = False
        # Asked for a required tensor the file lacks: return its dims to take it as present with
        # them (a caller building a file from what the loader asks for), or None for llama.cpp's refusal.
        self.on_missing: Callable[[str, list], bool] | None = None

    @staticmethod
    def _init_field(spec: tuple) -> object:
        if spec[0] == "array":
            zero = 0.0 if spec[1] == "float" else (False if spec[1] == "bool" else 0)
            return [zero] * spec[2]
        if spec[0] == "struct":
            sub = Struct("hparams", UNK)
            for k, s in spec[1].items():
                sub[k] = Machine._init_field(s)
            return sub
        return spec[1]

    # ------------------------------------------------------------------ stages

    def run_function(self, name: str, this: Struct, args: list) -> object:
        fn = _function(name)
        if fn is None:
            raise _GiveUp(name)
        return self.invoke(fn, this, args, None)

    def layers(self) -> list:
        layers = self.model["layers"]
        n = self.hp.get("n_layer_all")
        if isinstance(n, int) and len(layers) < n:
            layers.extend(Struct("layer", None) for _ in range(n - len(layers)))
        return layers

    # ------------------------------------------------------------------ calls

    def resolve(self, name: str) -> tuple[object, Struct] | None:
        for cls in self.chain:
            fn = _function(f"{cls}::{name}")
            if fn is not None:
                return fn, self.model
        fn = _function(f"llama_model::{name}")
        if fn is not None:
            return fn, self.model
        fn = _function(name)
        if fn is not None:
            return fn, self.model
        return None

    def invoke(self, fn: object, this: Struct, args: list, closure: Closure | None) -> object:
        params, body = fn[0], fn[1]  # type: ignore[index]
        if len(args) < len(params) and len(fn) > 2 and fn[2]:  # type: ignore[arg-type]
            defaults = fn[2]  # type: ignore[index]
            args = [*args, *(self.ev(d) if d is not None else UNK for d in defaults[len(args):len(params)])]
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _GiveUp("depth")
        saved = (self.scopes, self.levels, self.this, self.retval, self.ret_maybe, self.loop_maybe, self.maybe)
        if closure is not None:
            self.scopes = [*closure.scopes, dict(zip(params, args))]
            self.levels = [*closure.levels, self.maybe]
        else:
            self.scopes = [dict(zip(params, args))]
            self.levels = [self.maybe]
        self.this = this
        self.retval = None
        self.ret_maybe = 0
        self.loop_maybe = []
        try:
            try:
                status = self.exec(body)
            except _Dead:
                if not self.ret_maybe:
                    raise
                return UNK  # what follows a maybe-return fails: the function returned there
            result = self.retval if status == 1 else None
            if self.ret_maybe:
                result = UNK
            return result
        finally:
            self.scopes, self.levels, self.this, self.retval, self.ret_maybe, self.loop_maybe, self.maybe = saved
            self.depth -= 1

    # ------------------------------------------------------------------ statements

    def exec(self, s: list) -> int:
        """0 normal, 1 return, 2 break, 3 continue."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _GiveUp("steps")
        return _STMT[s[0]](self, s)

    def _block(self, s: list) -> int:
        self.scopes.append({})
        self.levels.append(self.maybe)
        try:
            for item in s[1]:
                st = self.exec(item)
                if st:
                    return st
            return 0
        finally:
            self.scopes.pop()
            self.levels.pop()

    def _if(self, s: list) -> int:
        c = self.truth(self.ev(s[1]))
        if c is True:
            return self.exec(s[2])
        if c is False:
            return self.exec(s[3]) if s[3] is not None else 0
        return self.branches([s[2], s[3]])

    def branches(self, arms: list) -> int:
        """Run each arm as a maybe-path; an arm that fails leaves the others, run again as certain
        when only one is left."""
        results = []
        why: list[str] = []
        for arm in arms:
            results.append(self.maybe_run(arm, why))
        alive = [(arm, st) for arm, st in zip(arms, results) if st != -1]
        if not alive:
            message = "; or ".join(dict.fromkeys(w for w in why if w)) or "every path fails"
            if self.maybe:
                raise _Dead(message)
            raise LoadError("paths", message)
        if len(alive) == 1 and len(arms) > 1:
            arm = alive[0][0]
            return self.exec(arm) if arm is not None else 0
        exits = {st for _, st in alive if st}
        if exits:
            # what follows may not run: uncertain until the function ends (return), the loop
            # ends (break) or the iteration ends (continue)
            self.maybe += 1
            if 1 in exits or not self.loop_maybe:
                self.ret_maybe += 1
            elif 2 in exits:
                self.loop_maybe[-1][1] += 1
            else:
                self.loop_maybe[-1][0] += 1
        return 0

    def maybe_run(self, arm: list | None, why: list[str]) -> int:
        """-1 when the arm fails; its writes are undone then, else left unknown."""
        if arm is None:
            return 0
        mark = len(self.journal)
        saved = (len(self.scopes), len(self.levels), self.this, self.retval, self.ret_maybe, [list(x) for x in self.loop_maybe], self.maybe, self.depth)
        self.maybe += 1
        try:
            st = self.exec(arm)
        except _Dead as dead:
            st = -1
            why.append(str(dead))
        finally:
            n_scopes, n_levels, self.this, self.retval, self.ret_maybe, loops, self.maybe, self.depth = saved
            del self.scopes[n_scopes:]
            del self.levels[n_levels:]
            self.loop_maybe[:] = loops
        if st == -1:
            for container, key, old in reversed(self.journal[mark:]):
                if key is None:  # a tensor's record (its `wrong` shapes stay: they name what every path asked for)
                    container.ok, container.certain = old
                else:
                    container[key] = old
            del self.journal[mark:]
        return st

    def _for(self, s: list) -> int:
        self.scopes.append({})
        self.levels.append(self.maybe)
        self.loop_maybe.append([0, 0])
        entry = self.maybe
        ret_entry = self.ret_maybe
        try:
            if s[1] is not None:
                self.exec(s[1])
            while True:
                if s[2] is not None:
                    c = self.truth(self.ev(s[2]))
                    if c is UNK:
                        self.unknown_loop(s[4])
                        break
                    if not c:
                        break
                lm = self.loop_maybe[-1]
                depth = len(self.scopes)
                try:
                    st = self.exec(s[4])
                except _Dead:
                    del self.scopes[depth:]
                    del self.levels[depth:]
                    if lm[1]:
                        break  # what follows a maybe-break fails: the loop ended there
                    if not lm[0]:
                        raise
                    st = 3  # ... a maybe-continue: the iteration ended there
                self.maybe -= lm[0]
                lm[0] = 0
                if st == 1:
                    return 1
                if st == 2:
                    break
                if s[3] is not None:
                    self.ev(s[3])
            return 0
        finally:
            self.maybe = entry + (self.ret_maybe - ret_entry)
            self.loop_maybe.pop()
            self.scopes.pop()
            self.levels.pop()

    def unknown_loop(self, body: list) -> None:
        """A loop whose count cannot be told (gguf_get_n_kv, ...): what its body may write becomes
        unknown, tensors it may create make the run incomplete, and what follows it is uncertain
        when it may leave the function. A body calling a function of the programs is not followed."""
        effects = _effects(body)
        for name in effects.calls:
            if self.resolve(name) is not None or any(name in scope for scope in self.scopes):
                raise _GiveUp("loop of unknown length calls a loader function")
        for name in effects.writes:
            self.taint(name)
        if effects.creates:
            self.incomplete = True
        if effects.returns:
            self.maybe += 1
            self.ret_maybe += 1

    def _while(self, s: list) -> int:
        return self._for(["for", None, s[1], None, s[2]])

    def _switch(self, s: list) -> int:
        v = self.ev(s[1])
        cases = s[2]
        start = None
        if v is not UNK:
            for i, (values, _) in enumerate(cases):
                if values is None:
                    continue
                vals = [self.ev(x) for x in values]
                if any(x is UNK for x in vals):
                    start = -1
                    break
                if v in vals:
                    start = i
                    break
            else:
                start = next((i for i, (values, _) in enumerate(cases) if values is None), None)
        else:
            start = -1
        if start is None:
            return 0
        if start >= 0:
            return self._cases(cases, start)
        arms = [["switchfrom", cases, i] for i in range(len(cases))]
        if all(values is not None for values, _ in cases):
            arms.append(None)
        return self.branches(arms)

    def _switchfrom(self, s: list) -> int:
        return self._cases(s[1], s[2])

    def _cases(self, cases: list, start: int) -> int:
        self.scopes.append({})
        self.levels.append(self.maybe)
        try:
            for _, items in cases[start:]:
                for item in items:
                    st = self.exec(item)
                    if st == 2:
                        return 0
                    if st:
                        return st
            return 0
        finally:
            self.scopes.pop()
            self.levels.pop()

    def _decl(self, s: list) -> int:
        name, ctype, e = s[1], s[2], s[3]
        if ctype == "lambda":
            value: object = Closure(e[1], e[2], list(self.scopes), list(self.levels), self.this)
        elif e is None:
            value = "" if ctype == "std::string" else UNK
        else:
            value = _convert(ctype, self.ev(e))
        self.scopes[-1][name] = value
        self.scopes[-1]["\0t" + name] = ctype
        return 0

    def _bind(self, s: list) -> int:
        value = self.ev(s[2])
        for i, name in enumerate(s[1]):
            self.scopes[-1][name] = value[i] if isinstance(value, (list, tuple)) and i < len(value) else UNK
        return 0

    def _ref(self, s: list) -> int:
        self.scopes[-1][s[1]] = self.ev(s[2])
        return 0

    def _expr(self, s: list) -> int:
        self.ev(s[1])
        return 0

    def _return(self, s: list) -> int:
        self.retval = self.ev(s[1]) if s[1] is not None else None
        return 1

    def _break(self, s: list) -> int:
        return 2

    def _continue(self, s: list) -> int:
        return 3

    def _throw(self, s: list) -> int:
        message = self.message(s[1])
        if self.maybe:
            raise _Dead(message)
        raise LoadError("throw", message)

    def _abort(self, s: list) -> int:
        message = self.message(s[1])
        if self.maybe:
            raise _Dead(message)
        raise LoadError("abort", message)

    def message(self, e: list) -> str:
        """A thrown message with its values (unknown ones as "?")."""
        try:
            if e[0] == "fmt":
                return _cformat(e[1], [self.ev(a) for a in e[2]])
            v = self.ev(e)
        except (LoadError, _Dead, _GiveUp):
            v = UNK
        return v.strip() if isinstance(v, str) else "?"

    def _assert(self, s: list) -> int:
        c = self.truth(self.ev(s[1]))
        if c is False:
            if self.maybe:
                raise _Dead(f"GGML_ASSERT({s[2]}) failed")
            raise LoadError("assert", f"GGML_ASSERT({s[2]}) failed", detail=self.describe(s[1]))
        return 0

    def _opaque(self, s: list) -> int:
        names, kinds = s[2], s[3]
        for n in names:
            self.taint(n)
        if "tensors" in kinds:
            self.incomplete = True
        if "exit" in kinds:
            self.maybe += 1
            self.ret_maybe += 1
        return 0

    def taint(self, name: str) -> None:
        for scope in self.scopes:
            if name in scope:
                scope[name] = UNK
        if name in self.hp:
            self.hp[name] = UNK if not isinstance(self.hp[name], list) else [UNK] * len(self.hp[name])
        if name in self.model and name not in ("hparams", "layers", "arch"):
            self.model[name] = UNK
        for layer in self.model["layers"]:
            if name in layer:
                layer[name] = UNK

    # ------------------------------------------------------------------ expressions

    def ev(self, e: list) -> object:
        return _EXPR[e[0]](self, e)

    def truth(self, v: object) -> object:
        if v is UNK:
            return UNK
        if v is None:
            return False
        if isinstance(v, (Tensor, Struct, Closure, list)):
            return True
        if isinstance(v, str):
            return True
        return bool(v)

    def lookup(self, name: str) -> object:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        this = self.this
        if this.kind == "graph":
            if name in this:
                return this[name]
            return self.model.read(name) if name in ("hparams", "layers") or name in A.TENSOR_MEMBERS else UNK
        if name in this:
            return this[name]
        if this.kind == "hparams":
            return UNK
        if name == "model":
            return self.model
        return this.read(name)

    def _n(self, e: list) -> object:
        return e[1]

    def _s(self, e: list) -> object:
        return e[1]

    def _null(self, e: list) -> object:
        return None

    def _unk(self, e: list) -> object:
        return UNK

    def _id(self, e: list) -> object:
        return self.lookup(e[1])

    def _get(self, e: list) -> object:
        obj = self.ev(e[1])
        if isinstance(obj, Struct):
            return obj.read(e[2])
        return UNK

    def _idx(self, e: list) -> object:
        obj = self.ev(e[1])
        i = self.ev(e[2])
        if isinstance(obj, list) and isinstance(i, int) and not isinstance(i, bool):
            if obj is self.model["layers"]:
                obj = self.layers()
            if 0 <= i < len(obj):
                return obj[i]
        return UNK

    def _un(self, e: list) -> object:
        v = self.ev(e[2])
        op = e[1]
        if op == "!":
            t = self.truth(v)
            return UNK if t is UNK else (not t)
        if v is UNK or not isinstance(v, (int, float)):
            return UNK
        if op == "-":
            return -v
        if op == "+":
            return v
        if op == "~":
            return ~int(v)
        return UNK

    def _bin(self, e: list) -> object:
        op = e[1]
        if op == "&&":
            a = self.truth(self.ev(e[2]))
            if a is False:
                return False
            b = self.truth(self.ev(e[3]))
            if b is False:
                return False
            return UNK if (a is UNK or b is UNK) else True
        if op == "||":
            a = self.truth(self.ev(e[2]))
            if a is True:
                return True
            b = self.truth(self.ev(e[3]))
            if b is True:
                return True
            return UNK if (a is UNK or b is UNK) else False
        a = self.ev(e[2])
        b = self.ev(e[3])
        if a is UNK or b is UNK:
            return UNK
        if op == "+" and isinstance(a, str) and isinstance(b, str):
            return a + b
        if op in ("==", "!="):
            if isinstance(a, (Tensor, Struct)) or isinstance(b, (Tensor, Struct)) or a is None or b is None:
                same = (a is b) if (a is None or b is None) else (a is b or a == b)
            elif isinstance(a, str) != isinstance(b, str):
                return UNK
            else:
                same = a == b
            return same if op == "==" else not same
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return UNK
        if op == "+":
            return a + b
        if op == "-":
            r = a - b
            return UNK if (r < 0 and isinstance(r, int) and a >= 0 and b >= 0) else r
        if op == "*":
            return a * b
        if op == "/":
            if b == 0:
                return UNK
            if isinstance(a, float) or isinstance(b, float):
                return a / b
            return _trunc_div(a, b)
        if op == "%":
            if b == 0 or isinstance(a, float) or isinstance(b, float):
                return UNK
            return a - b * _trunc_div(a, b)
        if op == "<":
            return a < b
        if op == "<=":
            return a <= b
        if op == ">":
            return a > b
        if op == ">=":
            return a >= b
        if isinstance(a, float) or isinstance(b, float):
            return UNK
        a, b = int(a), int(b)
        if op == "&":
            return a & b
        if op == "|":
            return a | b
        if op == "^":
            return a ^ b
        if op == "<<":
            return a << b if 0 <= b < 64 else UNK
        if op == ">>":
            return a >> b if 0 <= b < 64 else UNK
        return UNK

    def _cond(self, e: list) -> object:
        c = self.truth(self.ev(e[1]))
        if c is UNK:
            a, b = self.ev(e[2]), self.ev(e[3])
            return a if (a is not UNK and type(a) is type(b) and a == b) else UNK
        return self.ev(e[2]) if c else self.ev(e[3])

    def _assign(self, e: list) -> object:
        op, target, value = e[1], e[2], self.ev(e[3])
        if op != "=":
            cur = self.ev(target)
            value = self._bin(["bin", op[:-1], ["n", cur] if cur is not UNK else ["unk"], ["n", value] if value is not UNK else ["unk"]])
        if isinstance(value, list) and value is not self.model["layers"]:
            value = list(value)
        self.write(target, value)
        return value

    def _incr(self, e: list) -> object:
        cur = self.ev(e[2])
        new = UNK if not isinstance(cur, int) else (cur + 1 if e[1] == "++" else cur - 1)
        self.write(e[2], new)
        return new if e[3] else cur

    def _seq(self, e: list) -> object:
        v: object = None
        for x in e[1]:
            v = self.ev(x)
        return v

    def _list(self, e: list) -> object:
        return [self.ev(x) for x in e[1]]

    def _cast(self, e: list) -> object:
        return _convert(e[1] if e[1] in _GGUF_OF else None, self.ev(e[2]))

    def _lambda(self, e: list) -> object:
        return Closure(e[1], e[2], list(self.scopes), list(self.levels), self.this)

    def _fill(self, e: list) -> object:
        arr = self.ev(e[1])
        v = self.ev(e[2])
        if isinstance(arr, list):
            if self.maybe:
                for i in range(len(arr)):
                    self.store(arr, i, v)
            else:
                arr[:] = [v] * len(arr)
        return None

    def _call(self, e: list) -> object:
        name, args = e[1], e[2]
        if name in _GRAPH_OPS and self.this.kind == "graph":
            return _GRAPH_OPS[name](self, [self.ev(a) for a in args])
        for scope in reversed(self.scopes):
            if name in scope:
                f = scope[name]
                if isinstance(f, Closure):
                    return self.invoke((f.params, f.body), f.this, [self.ev(a) for a in args], f)
                return UNK
        if self.this.kind == "hparams":
            fn = _function(f"llama_hparams::{name}")
            if fn is not None:
                return self.invoke(fn, self.this, [self.ev(a) for a in args], None)
        found = self.resolve(name)
        if found is None:
            return UNK
        fn, this = found
        return self.invoke(fn, this, [self.ev(a) for a in args], None)

    def _mcall(self, e: list) -> object:
        obj = self.ev(e[1])
        if not isinstance(obj, Struct):
            return UNK
        fn = _function(e[2])
        if fn is None:
            return UNK
        return self.invoke(fn, obj, [self.ev(a) for a in e[3]], None)

    def _builtin(self, e: list) -> object:
        args = [self.ev(a) for a in e[2]]
        if any(a is UNK for a in args):
            return UNK
        if e[1] == "std::max":
            return max(args)  # type: ignore[type-var]
        if e[1] == "std::min":
            return min(args)  # type: ignore[type-var]
        if e[1] == "std::to_string":
            return str(args[0])
        return UNK

    def _lookup(self, e: list) -> object:
        v = self.ev(e[3])
        if v is UNK or not isinstance(v, str):
            return UNK
        for name, value in e[1]:
            if name == v:
                return value
        return e[2]

    def _vocab(self, e: list) -> object:
        return self.n_vocab if e[1] == "n_tokens" else self.n_token_types

    def _tn(self, e: list) -> object:
        base = self.ev(e[1])
        suffix = self.ev(e[2]) if e[2] is not None else None
        bid, xid = self.ev(e[3]), self.ev(e[4])
        if not isinstance(base, str) or bid is UNK or xid is UNK or suffix is UNK:
            return UNK
        name = base
        for v in (bid, xid):
            if "%d" in name:
                name = name.replace("%d", str(v), 1)
        return f"{name}.{suffix}" if suffix is not None else name

    # ------------------------------------------------------------------ writes

    def store(self, container: object, key: object, value: object) -> None:
        if self.maybe:
            self.journal.append((container, key, container[key]))  # type: ignore[index]
            value = UNK
        container[key] = value  # type: ignore[index]

    def write(self, target: list, value: object) -> None:
        k = target[0]
        if k == "id":
            name = target[1]
            for i in range(len(self.scopes) - 1, -1, -1):
                scope = self.scopes[i]
                if name in scope:
                    value = _convert(scope.get("\0t" + name), value)
                    if self.maybe > self.levels[i]:
                        self.journal.append((scope, name, scope[name]))
                        value = UNK
                    scope[name] = value
                    return
            this = self.this
            if this.kind == "graph":
                return
            if this.kind == "hparams":
                spec = A.HPARAMS.get(name)
                value = _convert(spec[0] if spec and spec[0] not in ("array", "struct") else None, value)
            if name not in this:
                this[name] = this.read(name)
            self.store(this, name, value)
            return
        if k == "get":
            obj = self.ev(target[1])
            if not isinstance(obj, Struct):
                holder = target[1]
                if holder[0] == "id" and holder[1] not in ("hparams", "layers", "model", "layer") and \
                        not any(holder[1] in scope for scope in self.scopes):
                    return  # a member this evaluator does not model (pimpl, ...): nothing it reads
                raise _GiveUp(f"write through an unknown object: {target}")
            if obj is self.hp:
                spec = A.HPARAMS.get(target[2])
                value = _convert(spec[0] if spec and spec[0] not in ("array", "struct") else None, value)
            if target[2] not in obj:
                obj[target[2]] = obj.read(target[2])
            self.store(obj, target[2], value)
            return
        if k == "idx":
            arr = self.ev(target[1])
            i = self.ev(target[2])
            if not isinstance(arr, list):
                raise _GiveUp("write into an unknown array")
            if not isinstance(i, int) or isinstance(i, bool):
                for j in range(len(arr)):
                    self.store(arr, j, UNK)
                return
            if 0 <= i < len(arr):
                self.store(arr, i, value)
            return
        raise _GiveUp("write to an expression")

    # ------------------------------------------------------------------ the loader (llama_model_loader)

    def key(self, kv: object) -> str | None:
        if not isinstance(kv, str):
            return None
        return kv.replace("%s", self.arch, 1) if "%s" in kv else kv

    def _ml(self, e: list) -> object:
        method, args, ctype = e[1], e[2], e[3]
        if method == "get_arch":
            return self.arch
        if method in ("get_weight", "get_tensor_meta"):
            name = self.ev(args[0])
            if not isinstance(name, str):
                return UNK
            return Tensor(name) if name in self.tensors else None
        key = self.key(self.ev(args[0]))
        if key is None:
            return UNK
        if method == "get_key":
            return self.get_key(key, args[1], self.ev(args[2]) if len(args) > 2 else True, ctype)
        if method == "get_arr_n":
            return self.get_arr_n(key, args[1], self.ev(args[2]) if len(args) > 2 else True)
        if method == "get_arr":
            return self.get_arr(key, args[1], self.ev(args[2]) if len(args) > 2 else True, ctype)
        if method == "get_key_or_arr":
            if len(args) == 3:
                return self.get_key_scalar(key, args[1], self.ev(args[2]), ctype)
            return self.get_key_or_arr(key, args[1], self.ev(args[2]), self.ev(args[3]) if len(args) > 3 else True, ctype)
        return UNK

    def fail(self, kind: str, message: str, key: str = "") -> None:
        if self.maybe:
            raise _Dead(message)
        raise LoadError(kind, message, key=key)

    def _required(self, required: object, key: str, ctype: str | None = None) -> bool:
        if required is UNK:
            if self.maybe:
                raise _Dead("")
            raise _GiveUp("required unknown")
        if required:
            if self.maybe:
                raise _Dead(f"key not found in model: {key}")
            raise LoadError("key-missing", f"key not found in model: {key}", key=key, detail=ctype or "")
        return False

    def get_key(self, key: str, target: list, required: object, ctype: str | None) -> object:
        kt = self.kv_types.get(key)
        if kt is None:
            return self._required(required, key, ctype)
        want = _GGUF_OF.get(ctype or "")
        if want is None:
            self.write(target, UNK)
            return True
        if kt != (want, None):
            got = _TYPE_NAMES[kt[0]] if kt[0] < len(_TYPE_NAMES) else str(kt[0])
            self.fail("key-type", f"key {key} has wrong type {got} but expected type {_TYPE_NAMES[want]}", key)
        value = self.meta.get(key)
        if want == 8 and not isinstance(value, str):
            value = UNK
        self.write(target, value)
        return True

    def get_key_scalar(self, key: str, target: list, required: object, ctype: str | None) -> object:
        kt = self.kv_types.get(key)
        if kt is None:
            return self._required(required, key, ctype)
        if kt[0] == 9:
            if required is UNK:
                raise _GiveUp("required unknown")
            if required:
                self.fail("key-type", f"expected scalar, found array for key: {key}", key)
            return False
        return self.get_key(key, target, required, ctype)

    def get_arr_n(self, key: str, target: list, required: object) -> object:
        kt = self.kv_types.get(key)
        if kt is None:
            return self._required(required, key, "array")
        if kt[0] != 9:
            self.fail("key-type", f"key {key} has wrong type {_TYPE_NAMES[kt[0]]} but expected type arr", key)
        self.write(target, _length(self.meta.get(key)))
        return True

    def _array_values(self, key: str, arr_type: int, ctype: str | None) -> list | None:
        """The items of an array key as get_arr reads them into `ctype` elements, or None (unknown)."""
        if ctype in ("int32_t", "uint32_t"):
            ok = arr_type in (4, 5, 7)
        elif ctype == "float":
            ok = arr_type == 6
        elif ctype == "uint64_t":
            ok = arr_type == 10
        elif ctype == "std::string":
            ok = arr_type == 8
        else:
            return None
        if arr_type not in (4, 5, 6, 7, 8, 10):
            self.fail("key-type", f"{key} is not a string/float32/uint32/int32/uint64 array", key)
        if not ok:
            self.fail("key-type", f"{key} has wrong array element type {_TYPE_NAMES[arr_type]}", key)
        value = self.meta.get(key)
        if not isinstance(value, list):
            return None
        return [_convert(ctype, int(x) if arr_type == 7 else x) for x in value]

    def get_arr(self, key: str, target: list, required: object, ctype: str | None) -> object:
        kt = self.kv_types.get(key)
        if kt is None or kt[0] != 9:
            return self._required(required, key, f"array:{ctype}")
        arr = self.ev(target)
        values = self._array_values(key, kt[1] if kt[1] is not None else -1, ctype)
        n = _length(self.meta.get(key))
        if isinstance(arr, list) and arr is not self.model["layers"] and self.writes_in_place(target):
            if isinstance(n, int) and n > len(arr):
                self.fail("key-type", f"array length {n} for key {key} exceeds max {len(arr)}", key)
            self._store_values(arr, values)
            return True
        self.write(target, values if values is not None else UNK)
        return True

    def _store_values(self, arr: list, values: list | None) -> None:
        """The key's values into `arr` from its start; when they are not known (None), every element is unknown."""
        if values is None:
            for i in range(len(arr)):
                self.store(arr, i, UNK)
        else:
            for i, v in enumerate(values):
                self.store(arr, i, v)

    def writes_in_place(self, target: list) -> bool:
        """Arrays of hparams are fixed-size std::array (get_arr fills a prefix); locals are vectors."""
        return target[0] == "get" or target[0] == "idx"

    def get_key_or_arr(self, key: str, target: list, n: object, required: object, ctype: str | None) -> object:
        kt = self.kv_types.get(key)
        if kt is None:
            return self._required(required, key, ctype)
        arr = self.ev(target)
        if not isinstance(arr, list) or not isinstance(n, int):
            if isinstance(arr, list):
                self._store_values(arr, None)
                return True
            raise _GiveUp("get_key_or_arr target")
        if n > len(arr):
            self.fail("key-type", f"n > N_MAX: {n} > {len(arr)} for key {key}", key)
        if kt[0] == 9:
            length = _length(self.meta.get(key))
            if length != n:
                self.fail("array-length", f"key {key} has wrong array length; expected {n}, got {length}", key)
            self._store_values(arr, self._array_values(key, kt[1] if kt[1] is not None else -1, ctype))
            return True
        want = _GGUF_OF.get(ctype or "")
        if want is not None and kt != (want, None):
            self.fail("key-type", f"key {key} has wrong type {_TYPE_NAMES[kt[0]]} but expected type {_TYPE_NAMES[want]}", key)
        value = _convert(ctype, self.meta.get(key)) if want is not None else UNK
        for i in range(n):
            self.store(arr, i, value)
        return True

    # ------------------------------------------------------------------ tensors (llama_model_loader::create_tensor)

    def _create(self, e: list) -> object:
        name = self.ev(e[1])
        dims = self.ev(e[2])
        flags = self.ev(e[3])
        if not isinstance(name, str):
            self.incomplete = True
            return UNK
        present = self.tensors.get(name)
        if not isinstance(dims, list):
            dims = UNK
        elif any(not isinstance(d, int) or isinstance(d, bool) for d in dims):
            dims = UNK
        if present is None:
            if flags is UNK:
                return None
            if not flags & NOT_REQUIRED:
                if self.on_missing is not None and not self.maybe and dims is not UNK and self.on_missing(name, dims):
                    self.tensors[name] = tuple(dims)  # type: ignore[index]
                    present = self.tensors[name]
                else:
                    self.fail("tensor-missing", f"tensor '{name}' not found", "")
                    return None
            else:
                return None
        rec = self.created.get(name)
        if rec is None:
            rec = self.created[name] = Created()
        if dims is not UNK:
            got = list(present) + [1] * (4 - len(present))
            if flags is not UNK and flags & ALLOW_RESHAPE:
                n_want = 1
                for d in dims:
                    n_want *= d
                n_got = 1
                for d in present:
                    n_got *= d
                fits = n_want == n_got
            else:
                fits = len(dims) <= 4 and all(got[i] == dims[i] for i in range(len(dims))) and all(d == 1 for d in got[len(dims):])
            if not fits:
                formula = e[4]
                if self.maybe:
                    rec.wrong.append(f"{formula} = {_fmt_shape(dims)}")
                    raise _Dead(f"tensor '{name}' has wrong shape; expected {_fmt_shape(dims)}, got {_fmt_shape(present)}")
                raise LoadError("tensor-shape", f"tensor '{name}' has wrong shape", tensor=name,
                                detail=f"expected {_fmt_shape(dims)} = {formula}, got {_fmt_shape(present)}")
        counted = flags is UNK or not (flags & DUPLICATED)
        if counted:
            if self.maybe:
                self.journal.append((rec, None, (rec.ok, rec.certain)))
            rec.ok = True
            if not self.maybe and flags is not UNK:
                rec.certain = True
        if name.split(".", 1)[0] in _UNUSED_HEADS and _base(name) in A.UNUSED_TENSORS:
            return None
        if flags is not UNK and flags & SKIP:
            return None
        return Tensor(name)

    # ------------------------------------------------------------------ messages

    def describe(self, e: list) -> str:
        """The values of the names an assertion reads, for its message."""
        out = {}

        def walk(x: object) -> None:
            if isinstance(x, list) and x:
                if x[0] == "id" and isinstance(x[1], str):
                    v = self.lookup(x[1])
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        out[x[1]] = v
                elif x[0] == "mcall" and not x[3]:
                    try:
                        v = self.ev(x)
                    except (LoadError, _Dead, _GiveUp):
                        v = UNK
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        out[x[2].split("::")[-1] + "()"] = v
                    return
                elif x[0] == "get" and x[1] == ["id", "hparams"]:
                    v = self.hp.get(x[2])
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        out[x[2]] = v
                    return
                for y in (x[1:] if isinstance(x[0], str) else x):
                    walk(y)

        walk(e)
        return ", ".join(f"{k} = {v}" for k, v in out.items())


_SPEC = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|j|t|L)?([diuxXfgeEscp%])")


def _cformat(fmt: str, args: list) -> str:
    """printf as llama.cpp's format() does it, unknown values as "?"."""
    it = iter(args)

    def sub(m: re.Match[str]) -> str:
        if m[1] == "%":
            return "%"
        v = next(it, UNK)
        if v is UNK or v is None:
            return "?"
        if m[1] in "fgeE" and isinstance(v, (int, float)):
            return f"{v:g}"
        if m[1] in "xX" and isinstance(v, int):
            return format(v, m[1])
        return str(int(v)) if isinstance(v, bool) else str(v)

    return _SPEC.sub(sub, fmt).strip()


class _Effects(NamedTuple):
    writes: frozenset[str]
    calls: frozenset[str]
    creates: bool
    returns: bool


def _effects(node: list) -> _Effects:
    """What a statement may change: names it assigns (variables, members, array bases, key
    targets), functions it calls, whether it creates tensors or returns."""
    writes: set[str] = set()
    calls: set[str] = set()
    flags = {"creates": False, "returns": False}

    def target(t: object) -> None:
        if isinstance(t, list) and t:
            if t[0] == "id":
                writes.add(t[1])
            elif t[0] == "get":
                writes.add(t[2])
            elif t[0] == "idx":
                target(t[1])

    def walk(x: object) -> None:
        if not isinstance(x, list) or not x or not isinstance(x[0], str):
            if isinstance(x, list):
                for y in x:
                    walk(y)
            return
        k = x[0]
        if k in ("assign", "incr"):
            target(x[2])
        elif k == "decl":
            writes.add(x[1])
        elif k == "ml" and len(x[2]) > 1:
            target(x[2][1])
        elif k == "fill":
            target(x[1])
        elif k == "call":
            calls.add(x[1])
        elif k == "mcall" and not x[2].split("::")[-1].startswith(("n_", "is_", "has_", "use_")):
            calls.add(x[2])
        elif k in ("create", "tn"):
            flags["creates"] = True
        elif k == "return":
            flags["returns"] = True
        elif k == "opaque":
            writes.update(x[2])
            if "tensors" in x[3]:
                flags["creates"] = True
            if "exit" in x[3]:
                flags["returns"] = True
        for y in x[1:]:
            walk(y)

    walk(node)
    return _Effects(frozenset(writes), frozenset(calls), flags["creates"], flags["returns"])


_UNUSED_HEADS = frozenset(u.split(".", 1)[0] for u in A.UNUSED_TENSORS)


def _base(name: str) -> str:
    parts = name.split(".")
    return ".".join("%d" if p.isdigit() else p for p in parts[:-1]) if len(parts) > 1 else name


def _length(value: object) -> object:
    if isinstance(value, list):
        return len(value)
    n = getattr(value, "length", None)
    return n if isinstance(n, int) else UNK


_STMT: dict[str, Callable[[Machine, list], int]] = {
    "block": Machine._block, "if": Machine._if, "for": Machine._for, "while": Machine._while, "switch": Machine._switch,
    "switchfrom": Machine._switchfrom, "decl": Machine._decl, "ref": Machine._ref, "expr": Machine._expr,
    "bind": Machine._bind, "return": Machine._return, "break": Machine._break, "continue": Machine._continue, "throw": Machine._throw,
    "abort": Machine._abort, "assert": Machine._assert, "opaque": Machine._opaque,
}
_EXPR: dict[str, Callable[[Machine, list], object]] = {
    "n": Machine._n, "s": Machine._s, "null": Machine._null, "unk": Machine._unk, "id": Machine._id, "get": Machine._get,
    "idx": Machine._idx, "un": Machine._un, "bin": Machine._bin, "cond": Machine._cond, "assign": Machine._assign,
    "incr": Machine._incr, "seq": Machine._seq, "list": Machine._list, "cast": Machine._cast, "lambda": Machine._lambda,
    "fill": Machine._fill, "call": Machine._call, "mcall": Machine._mcall, "builtin": Machine._builtin,
    "lookup": Machine._lookup, "vocab": Machine._vocab, "tn": Machine._tn, "ml": Machine._ml, "create": Machine._create,
}


def run(arch: str, meta: Mapping[str, object], kv_types: Mapping[str, tuple[int, int | None]],
        tensors: Mapping[str, tuple[int, ...]] | None, n_vocab: object, n_token_types: object = 0,
        on_missing: Callable[[str, list], bool] | None = None) -> Outcome:
    """llama.cpp's load of a model of `arch` (one in gguf_arch.ARCH_CLASSES) over this header.

    `tensors=None` stops after the hyper-parameters (a split part without its tensors);
    `on_missing`: see Machine.on_missing. A fault of this evaluator itself (a program it reads
    wrongly) ends the run with nothing found and `Outcome.fault` saying what happened.
    """
    try:
        return _run(arch, meta, kv_types, tensors, n_vocab, n_token_types, on_missing)
    except (RecursionError, TypeError, ValueError, AttributeError, IndexError, KeyError, ZeroDivisionError, OverflowError) as exc:
        return Outcome(fault=f"{type(exc).__name__}: {exc}")


def _run(arch: str, meta: Mapping[str, object], kv_types: Mapping[str, tuple[int, int | None]],
         tensors: Mapping[str, tuple[int, ...]] | None, n_vocab: object, n_token_types: object,
         on_missing: Callable[[str, list], bool] | None) -> Outcome:
    out = Outcome()
    m = Machine(arch, meta, kv_types, dict(tensors or {}), n_vocab, n_token_types)
    m.on_missing = on_missing
    out.machine = m
    try:
        m.run_function("llama_model_base::load_hparams", m.model, [None])
    except LoadError as err:
        out.hparams = err
        return out
    except (_GiveUp, _Dead):
        return out
    out.followed = True
    for name in ("n_embd", "n_layer_all", "n_expert"):
        out.values[name] = m.hp.get(name)
    if tensors is None:
        return out
    m.maybe = 0
    m.journal.clear()
    try:
        m.layers()
        m.run_function("preflight::load_tensors", m.model, [None])
    except LoadError as err:
        out.tensors = err
        return out
    except (_GiveUp, _Dead):
        return out
    if not m.incomplete:
        out.complete = True
        out.unused = [t for t in tensors if not (m.created.get(t) and m.created[t].ok)]
        for t in out.unused:
            rec = m.created.get(t)
            if rec is not None and rec.wrong:
                out.tensors = LoadError("tensor-shape", f"tensor '{t}' has wrong shape", tensor=t,
                                        detail=f"expected one of {'; '.join(rec.wrong)}, got {_fmt_shape(tensors[t])}")
                out.unused = []
                return out
    out.graph = _graph(m)
    return out


class Shaped(NamedTuple):
    """A graph value whose leading dims are known: ne0 (a head's size) and ne1 (the heads)."""

    ne0: object
    ne1: object


def _dims(m: Machine, t: object) -> tuple[int, ...] | None:
    if isinstance(t, Tensor):
        d = m.tensors.get(t.name)
        return tuple(d) + (1,) * (4 - len(d)) if d is not None else None
    return None


def _ints(*vals: object) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in vals)


def _graph_fail(m: Machine, message: str, detail: str) -> None:
    if m.maybe:
        raise _Dead(message)
    raise LoadError("graph-shape", message, detail=detail)


def _op_build_qkv(m: Machine, args: list) -> object:
    """llm_graph_context::build_qkv (llama-graph.cpp): Q, K and V of a layer reshaped (separate
    weights: ggml_reshape_3d, which asserts the element count) or viewed (a fused attn_qkv:
    ggml_view_3d, which asserts the views lie inside it) as heads."""
    if len(args) == 6:
        layer, _, hq, nq, nkv, _il = args
        hk, nk, hv, nv = hq, nkv, hq, nkv
    elif len(args) >= 9:
        layer, _, hq, nq, hk, nk, hv, nv = args[:8]
    else:
        return UNK
    out = [Shaped(hq, nq), Shaped(hk, nk), Shaped(hv, nv)]
    if not isinstance(layer, Struct) or not _ints(hq, nq, hk, nk, hv, nv):
        return out
    fused = layer.read("wqkv")
    if fused is None and layer.read("wq") is None:
        # neither a fused nor a separate query weight: build_lora_mm(layer.wq, ...) reads a null tensor
        _graph_fail(m, "the graph multiplies by blk.N.attn_q.weight, which this model does not have (llama.cpp crashes: a null tensor)",
                    "no attn_qkv.weight and no attn_q.weight in a block whose graph builds attention")
    if isinstance(fused, Tensor):
        d = _dims(m, fused)
        if d is not None and hq * nq + hk * nk + hv * nv > d[1]:
            _graph_fail(m, "GGML_ASSERT(view_src == NULL || data_size == 0 || data_size + view_offs <= ggml_nbytes(view_src)) failed",
                        f"{fused.name} has {d[1]} rows, build_qkv views {hq} x {nq} + {hk} x {nk} + {hv} x {nv} = {hq * nq + hk * nk + hv * nv} of them")
        return out
    for member, h, n in (("wq", hq, nq), ("wk", hk, nk), ("wv", hv, nv)):
        t = layer.read(member)
        d = _dims(m, t)
        if d is not None and d[1] != h * n:
            _graph_fail(m, "GGML_ASSERT(ggml_nelements(a) == ne0*ne1*ne2) failed",
                        f"build_qkv reshapes {t.name} ({d[1]} outputs per token) to {h} x {n} heads")  # type: ignore[union-attr]
    return out


def _op_build_attn(m: Machine, args: list) -> object:
    """llm_graph_context::build_attn: K x Q (ggml_mul_mat or ggml_flash_attn_ext, both assert
    ggml_can_mul_mat(k, q): the same head size, query heads a multiple of key/value heads),
    then the output projection of the heads (ggml_mul_mat: wo's input width = value head size x heads)."""
    shaped = [a for a in args if isinstance(a, Shaped)]
    if len(shaped) < 3:
        return UNK
    q, k, v = shaped[:3]
    if _ints(q.ne0, k.ne0) and q.ne0 != k.ne0:
        _graph_fail(m, "GGML_ASSERT(ggml_can_mul_mat(k, q)) failed", f"query heads of {q.ne0} against key heads of {k.ne0}")
    if _ints(q.ne1, k.ne1) and k.ne1 and q.ne1 % k.ne1:  # type: ignore[operator]
        _graph_fail(m, "GGML_ASSERT(ggml_can_mul_mat(k, q)) failed", f"{q.ne1} query heads are not a multiple of {k.ne1} key/value heads")
    wo = args[1] if len(args) > 1 else None
    d = _dims(m, wo)
    if d is not None and _ints(v.ne0, q.ne1) and d[0] != v.ne0 * q.ne1:  # type: ignore[operator]
        _graph_fail(m, "GGML_ASSERT(ggml_can_mul_mat(a, b)) failed",
                    f"{wo.name} takes {d[0]} inputs, attention gives {v.ne0} x {q.ne1} per token")  # type: ignore[union-attr]
    return UNK


def _op_rope(m: Machine, args: list) -> object:
    """ggml_rope_ext: computing it (the first decode) asserts n_dims <= the head size and n_dims even (ggml-cpu ops.cpp)."""
    if len(args) < 5:
        return UNK
    x, n_dims = args[1], args[4]
    if isinstance(x, Shaped) and _ints(x.ne0, n_dims):
        if n_dims > x.ne0:  # type: ignore[operator]
            _graph_fail(m, "GGML_ASSERT(n_dims <= ne0) failed", f"rope over {n_dims} dims of heads of {x.ne0}")
        if n_dims % 2:  # type: ignore[operator]
            _graph_fail(m, "GGML_ASSERT(n_dims % 2 == 0) failed", f"rope over {n_dims} dims")
    return x


def _same_shape(arg: int) -> Callable[[Machine, list], object]:
    """An op whose result has its input's shape (norms, scaling, ggml_cont)."""
    def op(m: Machine, args: list) -> object:
        x = args[arg] if len(args) > arg else UNK
        return x if isinstance(x, Shaped) else UNK
    return op


_GRAPH_OPS: dict[str, Callable[[Machine, list], object]] = {
    "build_qkv": _op_build_qkv, "build_attn": _op_build_attn, "ggml_rope_ext": _op_rope,
    "build_norm": _same_shape(0), "ggml_scale": _same_shape(1), "ggml_rms_norm": _same_shape(1), "ggml_norm": _same_shape(1),
    "ggml_l2_norm": _same_shape(1), "ggml_cont": _same_shape(1), "ggml_clamp": _same_shape(1),
}


def _graph(m: Machine) -> LoadError | None:
    """The assertions of the architecture's graph constructor (a context builds its first graph
    when it is created, before the first decode)."""
    for cls in m.chain:
        fn = _function(f"{cls}::graph")
        if fn is None:
            continue
        ctx = Struct("graph", UNK)
        m.this = m.model
        m.scopes, m.levels, m.maybe = [], [], 0
        for name, expr in A.GRAPH_MEMBERS.items():
            try:
                ctx[name] = m.ev(_as_list(expr))
            except (LoadError, _Dead, _GiveUp):
                ctx[name] = UNK
        ctx["hparams"] = m.hp
        try:
            m.invoke(fn, ctx, [m.model, UNK], None)
        except LoadError as err:
            return err
        except (_GiveUp, _Dead):
            return None
        return None
    return None


def _as_list(x: object) -> object:
    if isinstance(x, tuple):
        return [_as_list(y) for y in x]
    return x
