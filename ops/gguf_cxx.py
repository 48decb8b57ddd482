"""A reader for the small subset of C++ that llama.cpp's model loaders are written in.

Used by ops/gen-gguf-arch.py only (never at check time). It turns a function body into
statements and expressions as nested tuples (the program format preflight/formats/gguf_eval.py
runs):

statements
    ("block", stmts)              ("if", cond, then, else_or_None)
    ("for", init, cond, step, body)   ("while", cond, body)
    ("switch", expr, ((values_or_None, stmts), ...))
    ("decl", name, ctype, expr_or_None)   ("ref", name, expr)   (`auto & layer = layers[i];`)
    ("bind", names, expr)         (`auto [q, k, v] = expr;`)
    ("expr", expr)                ("return", expr_or_None)   ("break",)   ("continue",)
    ("throw", message_expr)       ("assert", expr, text)     ("abort", message_expr)
    ("opaque", text, names, kinds)   something this reader does not follow: `names` are the
                                     identifiers it mentions (all may change), `kinds` says
                                     whether it may create tensors, leave the function or throw
expressions
    ("n", number)  ("s", string)  ("id", name)  ("get", obj, field)  ("idx", obj, index)
    ("call", name, args)  ("method", obj, name, args)  ("un", op, e)  ("bin", op, a, b)
    ("cond", c, a, b)  ("assign", op, target, value)  ("incr", op, target, prefix)
    ("list", items)  ("cast", ctype, e)  ("unk", text)

Nothing here knows what llama.cpp means by a name; ops/gen-gguf-arch.py resolves names
(enums, keys, tensors, loader calls) on the trees this module returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_TOKEN = re.compile(r"""
 (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
|(?P<str>"(?:\\.|[^"\\\n])*")
|(?P<chr>'(?:\\.|[^'\\\n])+')
|(?P<num>0[xX][0-9a-fA-F]+[uUlL]*|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?[fFuUlL]*)
|(?P<id>[A-Za-z_]\w*)
|(?P<op>::|->|\+\+|--|<<=|>>=|<=|>=|==|!=|&&|\|\||\+=|-=|\*=|/=|%=|&=|\|=|\^=|<<|>>|\.\.\.|[-+*/%<>=!&|^~?:;,.(){}\[\]#])
""", re.S | re.X)

# Type names a declaration may start with (besides std::..., *_t and llama_/llm_/ggml_ names).
_TYPES = frozenset({
    "int", "unsigned", "signed", "long", "short", "char", "bool", "float", "double", "auto", "size_t", "int8_t",
    "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t", "uint64_t", "llama_token", "llama_pos",
    "void", "struct", "enum",
})
_QUALIFIERS = frozenset({"const", "constexpr", "static", "volatile", "mutable", "inline"})
_CASTS = frozenset({"static_cast", "reinterpret_cast", "const_cast", "dynamic_cast"})
_ASSIGN = frozenset({"=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>="})
_BINARY = {
    "||": 3, "&&": 4, "|": 5, "^": 6, "&": 7, "==": 8, "!=": 8, "<": 9, "<=": 9, ">": 9, ">=": 9,
    "<<": 10, ">>": 10, "+": 11, "-": 11, "*": 12, "/": 12, "%": 12,
}
_EXITS = frozenset({"return", "break", "continue", "goto"})


class Tok:
    __slots__ = ("kind", "text")

    def __init__(self, kind: str, text: str) -> None:
        self.kind, self.text = kind, text

    def __repr__(self) -> str:
        return self.text


def tokenize(src: str) -> list[Tok]:
    """C++ tokens without comments; preprocessor lines become one "#" token each (a parse stop)."""
    out: list[Tok] = []
    lines = []
    for line in src.split("\n"):
        lines.append("#@" if line.lstrip().startswith("#") else line)
    text = "\n".join(lines)
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            out.append(Tok("op", text[pos]))
            pos += 1
            continue
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        tok = m.group()
        if kind == "str" and out and out[-1].kind == "str":  # "a" "b" is one literal
            out[-1] = Tok("str", out[-1].text[:-1] + tok[1:])
            continue
        out.append(Tok(kind or "op", tok))
    return out


def unquote(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "0": "\0"}.get(m[1], m[1]), body)


def number(text: str) -> int | float:
    t = text.rstrip("uUlL")
    if t.lower().startswith("0x"):
        return int(t, 16)
    if any(c in t for c in ".eE") or t.endswith(("f", "F")):
        return float(t.rstrip("fF"))
    return int(t)


class ParseError(Exception):
    pass


class Parser:
    """Statements and expressions of one token list."""

    def __init__(self, toks: list[Tok]) -> None:
        self.t = toks
        self.i = 0

    # -------------------------------------------------------------- helpers
    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def at(self, text: str, k: int = 0) -> bool:
        p = self.peek(k)
        return p is not None and p.text == text and p.kind != "str"

    def take(self, text: str | None = None) -> Tok:
        p = self.peek()
        if p is None:
            raise ParseError("unexpected end")
        if text is not None and (p.text != text or p.kind == "str"):
            raise ParseError(f"expected {text!r}, got {p.text!r}")
        self.i += 1
        return p

    def match_close(self, start: int) -> int:
        """Index of the bracket closing the one at `start`."""
        pairs = {"(": ")", "[": "]", "{": "}"}
        stack = []
        j = start
        while j < len(self.t):
            tok = self.t[j]
            if tok.kind == "op":
                if tok.text in pairs:
                    stack.append(pairs[tok.text])
                elif tok.text in (")", "]", "}"):
                    if not stack or stack.pop() != tok.text:
                        raise ParseError("unbalanced")
                    if not stack:
                        return j
            j += 1
        raise ParseError("unbalanced")

    def text(self, a: int, b: int) -> str:
        return " ".join(t.text for t in self.t[a:b])

    # -------------------------------------------------------------- statements
    def block_items(self) -> list[tuple]:
        out = []
        while self.peek() is not None and not self.at("}"):
            out.append(self.statement())
        return out

    def statement(self) -> tuple:
        start = self.i
        try:
            return self._statement()
        except ParseError:
            self.i = start
            return self._opaque(start)

    def _opaque(self, start: int) -> tuple:
        """Skip one statement we cannot read: to the `;` at depth 0, or over a braced body."""
        j = start
        depth = 0
        while j < len(self.t):
            tok = self.t[j]
            if tok.kind == "op":
                if tok.text in "([{":
                    depth += 1
                elif tok.text in ")]}":
                    if depth == 0:
                        break
                    depth -= 1
                    if depth == 0 and tok.text == "}" and not (j + 1 < len(self.t) and self.t[j + 1].text in (";", ",", ")", "else")):
                        j += 1
                        break
                elif tok.text == ";" and depth == 0:
                    j += 1
                    break
            j += 1
        if j == start:
            j += 1
        self.i = j
        toks = self.t[start:j]
        names = tuple(sorted({t.text for t in toks if t.kind == "id"}))
        kinds = []
        words = {t.text for t in toks if t.kind == "id"}
        if words & {"create_tensor", "tn", "get_tensor_meta", "create_tensor_qkv", "create_tensor_gate_up_exps"} or any(w.startswith("create_") for w in words):
            kinds.append("tensors")
        if words & _EXITS:
            kinds.append("exit")
        if words & {"throw", "GGML_ASSERT", "GGML_ABORT"}:
            kinds.append("throw")
        return ("opaque", self.text(start, j), names, tuple(kinds))

    def _statement(self) -> tuple:
        p = self.peek()
        if p is None:
            raise ParseError("end")
        if p.text == "#":
            raise ParseError("preprocessor")
        if p.text == ";":
            self.take()
            return ("block", ())
        if p.text == "{":
            self.take()
            items = self.block_items()
            self.take("}")
            return ("block", tuple(items))
        if p.kind == "id":
            kw = p.text
            if kw == "if":
                self.take()
                if self.at("constexpr"):
                    self.take()
                self.take("(")
                cond = self.condition()
                self.take(")")
                then = self.statement()
                other = None
                if self.at("else"):
                    self.take()
                    other = self.statement()
                return ("if", cond, then, other)
            if kw == "for":
                self.take()
                self.take("(")
                close = self.match_close(self.i - 1)
                if any(t.text == ":" for t in self.t[self.i:close]):
                    raise ParseError("range for")
                init = None if self.at(";") else self.simple_statement()
                self.take(";")
                cond = None if self.at(";") else self.expression()
                self.take(";")
                step = None if self.at(")") else self.expression(allow_comma=True)
                self.take(")")
                body = self.statement()
                return ("for", init, cond, step, body)
            if kw == "while":
                self.take()
                self.take("(")
                cond = self.expression()
                self.take(")")
                return ("while", cond, self.statement())
            if kw == "switch":
                return self.switch()
            if kw == "return":
                self.take()
                e = None if self.at(";") else self.expression()
                self.take(";")
                return ("return", e)
            if kw in ("break", "continue"):
                self.take()
                self.take(";")
                return (kw,)
            if kw == "throw":
                self.take()
                start = self.i
                try:
                    e = self.expression()
                    if not self.at(";"):
                        raise ParseError("throw")
                except ParseError:
                    self.i = start
                    while not self.at(";"):
                        if self.at("(") or self.at("{") or self.at("["):
                            self.i = self.match_close(self.i) + 1
                        else:
                            self.take()
                    strs = [t.text for t in self.t[start:self.i] if t.kind == "str"]
                    e = ("s", unquote(strs[0]) if strs else self.text(start, self.i))
                self.take(";")
                if e[0] == "call" and e[1].startswith("std::") and len(e[2]) == 1:
                    e = e[2][0]  # std::runtime_error(message)
                return ("throw", e)
            if kw in ("GGML_ASSERT", "GGML_ABORT") and self.at("(", 1):
                self.take()
                open_at = self.i
                close = self.match_close(open_at)
                text = self.text(open_at + 1, close)
                if kw == "GGML_ABORT":
                    try:
                        self.take("(")
                        args = []
                        while not self.at(")"):
                            args.append(self.assignment())
                            if self.at(","):
                                self.take()
                        self.take(")")
                        e = ("call", "format", tuple(args)) if args else ("s", "fatal error")
                    except ParseError:
                        strs = [t.text for t in self.t[open_at:close] if t.kind == "str"]
                        e = ("s", unquote(strs[0]) if strs else text)
                    self.i = close + 1
                    self.take(";")
                    return ("abort", e)
                self.take("(")
                cond = self.condition()
                self.take(")")
                self.take(";")
                return ("assert", cond, text)
            if kw in ("do", "goto", "try", "catch", "case", "default", "using", "typedef"):
                raise ParseError(kw)
        st = self.simple_statement()
        self.take(";")
        return st

    def switch(self) -> tuple:
        self.take("switch")
        self.take("(")
        subject = self.expression()
        self.take(")")
        self.take("{")
        cases: list[tuple[tuple | None, list]] = []
        while not self.at("}"):
            if self.at("case"):
                values = []
                while self.at("case"):
                    self.take()
                    values.append(self.expression(stop_colon=True))
                    self.take(":")
                cases.append((tuple(values), []))
            elif self.at("default"):
                self.take()
                self.take(":")
                cases.append((None, []))
            else:
                if not cases:
                    raise ParseError("statement before case")
                cases[-1][1].append(self.statement())
        self.take("}")
        return ("switch", subject, tuple((v, tuple(s)) for v, s in cases))

    def simple_statement(self) -> tuple:
        """A declaration or an expression, without the final `;`."""
        decl = self.try_declaration()
        if decl is not None:
            return decl
        return ("expr", self.expression(allow_comma=True))

    def skip_type(self) -> str | None:
        """Consume a type (qualifiers, name, template arguments, `*`/`&`); return its base name."""
        start = self.i
        while self.peek() is not None and self.peek().text in _QUALIFIERS:
            self.i += 1
        p = self.peek()
        if p is None or p.kind != "id":
            self.i = start
            return None
        parts = []
        while True:
            p = self.peek()
            if p is None or p.kind != "id":
                break
            parts.append(p.text)
            self.i += 1
            if self.at("<"):
                depth = 0
                while self.peek() is not None:
                    tx = self.peek().text
                    if tx == "<":
                        depth += 1
                    elif tx == ">":
                        depth -= 1
                    elif tx == ">>":
                        depth -= 2
                    elif tx in (";", "{", "}"):
                        self.i = start
                        return None
                    self.i += 1
                    if depth <= 0:
                        break
            if self.at("::"):
                parts.append("::")
                self.i += 1
                continue
            if parts[-1] in ("unsigned", "signed", "long", "short", "struct", "enum") and self.peek() is not None and self.peek().kind == "id" and self.peek(1) is not None and self.peek(1).kind == "id":
                continue
            break
        while self.peek() is not None and self.peek().text in ("const",):
            self.i += 1
        return "".join(parts)

    def try_declaration(self) -> tuple | None:
        start = self.i
        p = self.peek()
        if p is None or p.kind != "id":
            return None
        first = p.text
        if not (first in _TYPES or first in _QUALIFIERS or first == "std" or first.endswith("_t")
                or re.match(r"^(llama|llm|ggml|gguf)_\w+$", first)):
            return None
        base = self.skip_type()
        if base is None:
            self.i = start
            return None
        ref = False
        while self.peek() is not None and self.peek().text in ("&", "*", "&&"):
            ref = ref or self.peek().text in ("&", "&&")
            self.i += 1
        if base == "auto" and self.at("["):  # a structured binding: auto [a, b, c] = expr
            close = self.match_close(self.i)
            names = tuple(t.text for t in self.t[self.i + 1:close] if t.kind == "id")
            self.i = close + 1
            self.take("=")
            return ("bind", names, self.expression())
        name = self.peek()
        if name is None or name.kind != "id" or not (self.peek(1) is not None and self.peek(1).text in ("=", ";", "(", "{", "[", ",")):
            self.i = start
            return None
        if self.peek(1).text in ("[", ","):  # arrays and several names at once: not followed
            raise ParseError("array or multiple declaration")
        self.i += 1
        nxt = self.peek().text
        if nxt == ";":
            return ("decl", name.text, base, None)
        if nxt == "=":
            self.take()
            value = self.expression()
            return ("ref" if ref else "decl", name.text, base, value) if not ref else ("ref", name.text, value)
        if nxt in ("(", "{"):
            close = self.match_close(self.i)
            self.take()
            args = []
            while not self.at(")") and not self.at("}"):
                args.append(self.expression())
                if self.at(","):
                    self.take()
            self.i = close + 1
            if len(args) == 1:
                return ("decl", name.text, base, args[0])
            return ("decl", name.text, base, ("unk", self.text(start, self.i)))
        raise ParseError("declaration")

    # -------------------------------------------------------------- expressions
    def condition(self) -> tuple:
        decl = self.try_declaration()
        if decl is not None:
            raise ParseError("declaration in condition")
        return self.expression(allow_comma=False)

    def expression(self, allow_comma: bool = False, stop_colon: bool = False) -> tuple:
        e = self.assignment(stop_colon)
        if allow_comma:
            items = [e]
            while self.at(","):
                self.take()
                items.append(self.assignment(stop_colon))
            if len(items) > 1:
                return ("seq", tuple(items))
        return e

    def assignment(self, stop_colon: bool = False) -> tuple:
        left = self.ternary(stop_colon)
        p = self.peek()
        if p is not None and p.kind == "op" and p.text in _ASSIGN:
            self.take()
            right = self.assignment(stop_colon)
            return ("assign", p.text, left, right)
        return left

    def ternary(self, stop_colon: bool = False) -> tuple:
        c = self.binary(0)
        if self.at("?"):
            self.take()
            a = self.assignment()
            self.take(":")
            b = self.assignment(stop_colon)
            return ("cond", c, a, b)
        return c

    def binary(self, min_prec: int) -> tuple:
        left = self.unary()
        while True:
            p = self.peek()
            if p is None or p.kind != "op" or p.text not in _BINARY:
                return left
            prec = _BINARY[p.text]
            if prec <= min_prec:
                return left
            self.take()
            right = self.binary(prec)
            left = ("bin", p.text, left, right)

    def unary(self) -> tuple:
        p = self.peek()
        if p is None:
            raise ParseError("end")
        if p.kind == "op" and p.text in ("!", "-", "+", "~"):
            self.take()
            return ("un", p.text, self.unary())
        if p.kind == "op" and p.text in ("++", "--"):
            self.take()
            return ("incr", p.text, self.unary(), True)
        if p.kind == "op" and p.text in ("*", "&"):
            self.take()
            return ("unk", p.text + repr(self.unary()))
        if p.kind == "id" and p.text == "sizeof":
            raise ParseError("sizeof")
        if p.kind == "op" and p.text == "(" and self.is_cast():
            self.take()
            ctype = self.skip_type()
            while self.at("*") or self.at("&"):
                self.take()
            self.take(")")
            return ("cast", ctype, self.unary())
        return self.postfix(self.primary())

    def is_cast(self) -> bool:
        save = self.i
        try:
            self.i += 1
            p = self.peek()
            if p is None or p.kind != "id" or not (p.text in _TYPES or p.text in _QUALIFIERS or p.text.endswith("_t")
                                                   or p.text == "std" or re.match(r"^(llama|llm|ggml)_\w+$", p.text)):
                return False
            if self.skip_type() is None:
                return False
            while self.at("*") or self.at("&"):
                self.i += 1
            return self.at(")")
        finally:
            self.i = save

    def primary(self) -> tuple:
        p = self.take()
        if p.kind == "num":
            return ("n", number(p.text))
        if p.kind == "str":
            return ("s", unquote(p.text))
        if p.kind == "chr":
            return ("n", ord(unquote(p.text)[0]) if len(unquote(p.text)) == 1 else 0)
        if p.kind == "op":
            if p.text == "(":
                e = self.expression(allow_comma=True)
                self.take(")")
                return e
            if p.text == "{":
                items = []
                while not self.at("}"):
                    items.append(self.assignment())
                    if self.at(","):
                        self.take()
                self.take("}")
                return ("list", tuple(items))
            if p.text == "::":
                return self.primary()
            if p.text == "[":
                return self.lambda_()
            raise ParseError(f"unexpected {p.text!r}")
        name = p.text
        if name in ("true", "false"):
            return ("n", name == "true")
        if name in ("nullptr", "NULL"):
            return ("null",)
        if name in _CASTS and self.at("<"):
            self.take()
            ctype = self.skip_type()
            while self.at("*") or self.at("&"):
                self.take()
            self.take(">")
            self.take("(")
            e = self.expression()
            self.take(")")
            return ("cast", ctype, e)
        if name == "this" and self.at("->"):
            self.take()
            return self.primary()
        while self.at("::") and self.peek(1) is not None and self.peek(1).kind == "id":
            self.take()
            name += "::" + self.take().text
        if self.at("<") and name in ("std::max", "std::min"):
            self.take()
            self.skip_type()
            self.take(">")
        if self.at("[") and name in ("", ) :
            raise ParseError("lambda")
        return ("id", name)

    def lambda_(self) -> tuple:
        """`[captures](params) [-> type] { body }` (the `[` is taken): ("lambda", params, body)."""
        self.i = self.match_close(self.i - 1) + 1
        params: list[tuple[str, str]] = []
        if self.at("("):
            close = self.match_close(self.i)
            for part in _split_params(self.t[self.i + 1:close]):
                if part:
                    params.append((" ".join(t.text for t in part[:-1]), part[-1].text))
            self.i = close + 1
        while self.at("mutable") or self.at("->"):
            if self.take().text == "->":
                self.skip_type()
                while self.at("*") or self.at("&"):
                    self.take()
        if not self.at("{"):
            raise ParseError("lambda body")
        close = self.match_close(self.i)
        inner = Parser(self.t[self.i + 1:close])
        items = inner.block_items()
        self.i = close + 1
        return ("lambda", tuple(params), ("block", tuple(items)))

    def postfix(self, e: tuple) -> tuple:
        while True:
            if self.at("("):
                self.take()
                args = []
                while not self.at(")"):
                    args.append(self.assignment())
                    if self.at(","):
                        self.take()
                    elif not self.at(")"):
                        raise ParseError("argument list")
                self.take(")")
                if e[0] == "get":
                    e = ("method", e[1], e[2], tuple(args))
                elif e[0] == "id":
                    e = ("call", e[1], tuple(args))
                else:
                    raise ParseError("call of an expression")
            elif self.at("["):
                self.take()
                idx = self.expression()
                self.take("]")
                e = ("idx", e, idx)
            elif self.at(".") or self.at("->"):
                self.take()
                f = self.take()
                if f.kind != "id":
                    raise ParseError("member")
                e = ("get", e, f.text)
            elif self.at("++") or self.at("--"):
                op = self.take().text
                e = ("incr", op, e, False)
            else:
                return e


def _split_params(toks: list[Tok]) -> list[list[Tok]]:
    parts: list[list[Tok]] = [[]]
    depth = 0
    for t in toks:
        if t.text in ("(", "<", "[", "{"):
            depth += 1
        elif t.text in (")", ">", "]", "}"):
            depth -= 1
        if t.text == "," and depth == 0:
            parts.append([])
        else:
            parts[-1].append(t)
    return [[t for t in p if t.text not in ("&", "*", "const")] for p in parts]


def parse_body(src: str) -> tuple:
    """The statements of a function body (the text between its braces)."""
    p = Parser(tokenize(src))
    items = p.block_items()
    if p.peek() is not None:
        raise ParseError(f"stopped at {p.peek()!r}")
    return ("block", tuple(items))


def parse_expression(src: str) -> tuple:
    p = Parser(tokenize(src))
    e = p.expression()
    if p.peek() is not None:
        raise ParseError(f"trailing {p.peek()!r}")
    return e


def function_bodies(src: str) -> Iterator[tuple[str, str, str, str]]:
    """(qualified name, parameter text, initializer-list text, body text) of each function
    defined at the top level of `src` (namespaces are entered; other braced items skipped)."""
    toks = tokenize(src)
    p = Parser(toks)
    head_start = 0
    j = 0
    n = len(toks)
    while j < n:
        t = toks[j]
        if t.kind == "op" and t.text in (";", "}"):
            head_start = j + 1
        elif t.kind == "op" and t.text == "{":
            head = toks[head_start:j]
            if head and head[0].text == "namespace" or (head and head[0].text == "extern"):
                head_start = j + 1
                j += 1
                continue
            close = p.match_close(j)
            sig = _signature(head)
            if sig is not None:
                name, params, init = sig
                yield name, params, init, " ".join(_raw(x) for x in toks[j + 1:close])
            j = close + 1
            head_start = j
            if j < n and toks[j].text == ";":
                head_start = j + 1
            continue
        j += 1


def _signature(head: list[Tok]) -> tuple[str, str, str] | None:
    """name, parameters and initializer list of a function header, or None (a struct, a table)."""
    depth = 0
    open_at = None
    for k, t in enumerate(head):
        if t.kind != "op":
            continue
        if t.text == "(":
            if depth == 0 and open_at is None:
                open_at = k
            depth += 1
        elif t.text == ")":
            depth -= 1
            if depth == 0 and open_at is not None:
                close_at = k
                break
        elif t.text == "=" and depth == 0:
            return None
    else:
        return None
    if open_at is None or open_at == 0:
        return None
    parts = []
    q = open_at - 1
    while q >= 0:
        tx = head[q].text
        if head[q].kind == "id" or tx in ("::", "~"):
            if head[q].kind == "id" and parts and parts[-1] not in ("::", "~") and not parts[-1].startswith("<"):
                break  # the return type
            parts.append(tx)
            q -= 1
        elif tx == ">" and parts and parts[-1] == "::":  # Class<T>::
            d = 0
            r = q
            while r >= 0:
                if head[r].text == ">":
                    d += 1
                elif head[r].text == "<":
                    d -= 1
                    if d == 0:
                        break
                r -= 1
            parts.append("".join(x.text for x in head[r:q + 1]))
            q = r - 1
        else:
            break
    name = "".join(reversed(parts))
    if not name or name in ("if", "for", "while", "switch"):
        return None
    rest = head[close_at + 1:]
    while rest and rest[0].kind == "id" and rest[0].text in ("const", "override", "noexcept", "final"):
        rest = rest[1:]
    init = ""
    if rest and rest[0].text == ":":
        init = " ".join(x.text for x in rest[1:])
    elif rest:
        return None
    return name, " ".join(x.text for x in head[open_at + 1:close_at]), init


def _raw(t: Tok) -> str:
    return t.text if t.text != "#@" else "\n#@\n"


def _match_open(toks: list[Tok], close: int) -> int:
    pairs = {")": "(", "]": "[", "}": "{"}
    want = [toks[close].text]
    j = close - 1
    while j >= 0:
        tx = toks[j].text
        if toks[j].kind == "op":
            if tx in pairs:
                want.append(tx)
            elif tx in ("(", "[", "{"):
                if pairs[want[-1]] != tx:
                    raise ParseError("unbalanced")
                want.pop()
                if not want:
                    return j
        j -= 1
    raise ParseError("unbalanced")
