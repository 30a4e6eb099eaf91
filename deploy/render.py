"""Renders the Helm chart without Helm: the subset of Go templates our chart uses.

Helm is not packaged for Debian and cannot be downloaded on our machines, so the tests
(tests/hai/test_deploy.py, tests/deploy/) render every template with this file and validate
the result offline with kubernetes-validate. Where a ``helm`` binary exists, the tests render
with ``helm template`` as well and validate that too.

    python deploy/render.py deploy/helm/hai [-f values.yaml]... [--name hai] [-n NAMESPACE]

Supported, as Go's text/template and Helm define them: ``{{ }}`` with ``{{-``/``-}}``
trimming, comments, ``define``/``include`` (``$`` inside a defined template is the value
passed to ``include``, as in Go), ``if``/``else if``/``else``, ``range`` (with
``$i, $v :=``), ``with``/``else``, variables declared with ``:=`` (each lives until the
``end`` of the block that declares it), pipelines, parentheses, and the functions in
:data:`FUNCTIONS` plus ``.Files.Get``. Values are checked against the chart's
``values.schema.json`` first, as Helm does. Anything else is an error naming the template,
the line and the construct, so a chart change that needs more fails the tests instead of
rendering wrongly: among others ``else with``, ``template``/``block``/``break``/
``continue``, assignment with ``=``, declarations inside ``if``/``with``/``range``
pipelines other than range's own, printf verbs other than ``%s %v %d %%``, a negative
``trunc``, printing a float, map or list (Go's text differs from Python's), and a field of
a missing value (Helm's "nil pointer evaluating"). Values merge like Helm's ``-f``: later
files win, maps merge key by key.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TemplateError(ValueError):
    """A template uses something this renderer does not support, or fails (required)."""


class ValuesError(TemplateError):
    """The values do not match the chart's values.schema.json."""


# ---- parsing ---------------------------------------------------------------------------------
_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|`[^`]*`)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<declare>:=)
      | (?P<punct>[|(),=])
      | (?P<variable>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
      | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


@dataclass
class Node:
    kind: str  # text, output, assign, if, range, with, define
    where: str = ""  # template:line of the action
    text: str = ""
    pipeline: list[Any] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)


@dataclass
class _Block:
    """An open block while parsing: where its nodes go and which variables are in scope."""

    node: Node | None
    body: list[Node]
    kind: str  # root, define, if, with, range
    names: set[str]
    in_else: bool = False
    chained: bool = False  # the else part of an if whose else-if ends with that if's end


def tokenize(source: str, where: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    source = source.strip()
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"{where}: cannot read {source[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(source) and source[pos].isspace():
            pos += 1
    return tokens


def parse_pipeline(tokens: list[tuple[str, str]], where: str, names: set[str]) -> list[Any]:
    """A pipeline as a list of commands; a command is a list of operands, an operand is a
    token or a nested pipeline (parentheses). Every variable must be in ``names`` (declared
    in an enclosing block), as Go checks when it parses."""
    if any(kind == "declare" for kind, _ in tokens):
        raise TemplateError(f"{where}: declaring a variable here is not supported")
    commands: list[list[Any]] = [[]]
    stack: list[list[list[Any]]] = []
    for kind, value in tokens:
        if kind == "punct" and value == "|":
            commands.append([])
        elif kind == "punct" and value == "(":
            stack.append(commands)
            commands = [[]]
        elif kind == "punct" and value == ")":
            if not stack:
                raise TemplateError(f"{where}: unbalanced ')'")
            inner, commands = commands, stack.pop()
            commands[-1].append(("pipeline", inner))
        elif kind == "punct" and value == "=":
            raise TemplateError(f"{where}: assignment with '=' is not supported; declare with :=")
        elif kind == "punct":
            raise TemplateError(f"{where}: unexpected {value!r}")
        else:
            if kind == "variable" and value.split(".")[0] not in names:
                raise TemplateError(
                    f"{where}: undefined variable {value.split('.')[0]} (a variable lives"
                    " until the end of the block that declares it)"
                )
            commands[-1].append((kind, value))
    if stack or any(not c for c in commands):
        raise TemplateError(f"{where}: malformed pipeline")
    return commands


def _actions(source: str) -> list[tuple[str, str, int]]:
    """("text", s, line) and ("action", s, line) pieces, with ``{{-``/``-}}`` trimming done."""
    pieces: list[tuple[str, str, int]] = []
    pos = 0
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        line = source.count("\n", 0, m.start()) + 1
        pieces.append(("text", text, line))
        pieces.append(("action", m.group(2).strip(), line))
        pos = m.end()
        if m.group(3):
            while pos < len(source) and source[pos].isspace():
                pos += 1
    pieces.append(("text", source[pos:], 0))
    return pieces


def parse(source: str, template: str, defines: dict[str, list[Node]]) -> list[Node]:
    """Parses a template into nodes; ``define`` blocks go into ``defines``.

    Raises:
        TemplateError: a construct this renderer does not implement, or a malformed one,
            naming ``template:line``.
    """
    root: list[Node] = []
    stack = [_Block(None, root, "root", {"$"})]
    for kind, action, line in _actions(source):
        top = stack[-1]
        if kind == "text":
            if action:
                top.body.append(Node("text", text=action))
            continue
        where = f"{template}:{line}"
        if action.startswith("/*"):
            if not action.endswith("*/"):
                raise TemplateError(f"{where}: a comment must be the whole action")
            continue
        word = action.split(None, 1)[0] if action else ""
        rest = action[len(word) :].strip()
        if word == "define":
            if len(stack) != 1:
                raise TemplateError(f"{where}: define inside a block")
            try:
                name = json.loads(rest)
            except ValueError:
                raise TemplateError(f"{where}: define needs a quoted name, not {rest!r}") from None
            node = Node("define", where=where, text=name)
            stack.append(_Block(node, node.body, "define", {"$"}))
        elif word in ("if", "with", "range"):
            tokens = tokenize(rest, where)
            variables: list[str] = []
            if word == "range" and any(k == "declare" for k, _ in tokens):
                split = next(i for i, (k, _) in enumerate(tokens) if k == "declare")
                variables = [v for k, v in tokens[:split] if k == "variable"]
                if len(variables) not in (1, 2) or split != 2 * len(variables) - 1:
                    raise TemplateError(f"{where}: cannot read range {rest!r}")
                tokens = tokens[split + 1 :]
            pipeline = parse_pipeline(tokens, where, top.names)
            node = Node(word, where=where, pipeline=pipeline, variables=variables)
            top.body.append(node)
            stack.append(_Block(node, node.body, word, top.names | set(variables)))
        elif word == "else":
            _parse_else(stack, rest, where)
        elif word == "end":
            if rest:
                raise TemplateError(f"{where}: cannot read {action!r}")
            if len(stack) == 1:
                raise TemplateError(f"{where}: end outside a block")
            block = stack.pop()
            while block.chained:  # an else-if chain ends with its last if
                block = stack.pop()
            if block.kind == "define":
                assert block.node is not None
                defines[block.node.text] = block.node.body
        elif word.startswith("$") and ":=" in action:
            tokens = tokenize(action, where)
            if len(tokens) < 3 or tokens[0][0] != "variable" or tokens[1][0] != "declare":
                raise TemplateError(f"{where}: cannot read {action!r}")
            pipeline = parse_pipeline(tokens[2:], where, top.names)
            top.names.add(tokens[0][1])
            top.body.append(
                Node("assign", where=where, pipeline=pipeline, variables=[tokens[0][1]])
            )
        elif word in ("template", "block", "break", "continue"):
            raise TemplateError(f"{where}: {word!r} is not supported; use include")
        else:
            pipeline = parse_pipeline(tokenize(action, where), where, top.names)
            top.body.append(Node("output", where=where, pipeline=pipeline))
    if len(stack) != 1:
        block = stack[-1]
        assert block.node is not None
        raise TemplateError(f"{block.node.where}: {block.kind} is not closed with end")
    return root


def _parse_else(stack: list[_Block], rest: str, where: str) -> None:
    """``else`` and ``else if``: the open block's else branch (a nested if for else-if)."""
    block = stack.pop()
    if block.kind not in ("if", "with", "range") or block.node is None:
        raise TemplateError(f"{where}: else outside if, with or range")
    if block.in_else:
        raise TemplateError(f"{where}: a second else in one {block.kind}")
    outer = stack[-1].names
    if not rest:
        stack.append(_Block(block.node, block.node.orelse, block.kind, set(outer), True))
    elif rest.startswith("if ") and block.kind == "if":
        tokens = tokenize(rest[3:], where)
        nested = Node("if", where=where, pipeline=parse_pipeline(tokens, where, outer))
        block.node.orelse.append(nested)
        stack.append(_Block(block.node, block.node.orelse, "if", set(outer), True, chained=True))
        stack.append(_Block(nested, nested.body, "if", set(outer)))
    else:
        word = rest.split(None, 1)[0]
        raise TemplateError(f"{where}: 'else {word}' in {block.kind} is not supported")


# ---- evaluation -------------------------------------------------------------------------------
def truthy(value: Any) -> bool:
    return bool(value) if value is not None else False


def text(value: Any) -> str:
    """``value`` as Go's fmt prints it (``%v``), for the kinds whose text Python writes the
    same way; floats, maps and lists (Go: ``1``, ``map[a:1]``, ``[a b]``) are refused."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    if value is None:
        raise TemplateError("printing a missing value is not supported; give it a default")
    what = {float: "the float", dict: "a map", list: "a list"}.get(type(value), "the value")
    raise TemplateError(
        f"printing {what} {value!r} is not supported (Go prints it differently); "
        "quote it in the values, or use toYaml"
    )


def _string(value: Any, function: str) -> str:
    """The string argument of a Sprig function, which Go refuses to convert from other types."""
    if not isinstance(value, str):
        raise TemplateError(f"{function} takes a string, not {value!r}; pipe it to toString")
    return value


def to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n: int, value: Any) -> str:
    pad = " " * int(n)
    return "\n".join(pad + line if line else line for line in _string(value, "indent").split("\n"))


def _printf(fmt: str, *args: Any) -> str:
    """Go's fmt.Sprintf for the verbs ``%s`` (strings only, as Go prints others as
    ``%!s(int=1)``), ``%v``, ``%d`` and ``%%``; any other verb, flag or width is refused."""
    values = list(args)

    def one(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        if verb not in ("s", "v", "d"):
            raise TemplateError(f"printf verb %{verb} is not supported (only %s, %v, %d, %%)")
        if not values:
            raise TemplateError(f"printf {fmt!r} has more verbs than arguments")
        value = values.pop(0)
        if verb == "s" and not isinstance(value, str):
            raise TemplateError(f"printf %s of {value!r}, not a string: use %v")
        if verb == "d" and (not isinstance(value, int) or isinstance(value, bool)):
            raise TemplateError(f"printf %d of {value!r}, not an integer")
        return text(value)

    out = re.sub(r"%(.?)", one, fmt, flags=re.S)
    if values:
        raise TemplateError(f"printf {fmt!r} has more arguments than verbs")
    return out


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateError(message)
    return value


def _quote(*values: Any) -> str:
    """Sprig's quote: each non-nil value's text in double quotes (Go's %q), space-separated.
    Escapes differ from Go's only for control characters (``\\u0007`` for ``\\a``), which
    read back as the same YAML string."""
    return " ".join(json.dumps(text(v), ensure_ascii=False) for v in values if v is not None)


def _trunc(n: int, value: Any) -> str:
    if int(n) < 0:  # Sprig keeps the last -n characters; nothing here needs that
        raise TemplateError(f"trunc {n}: a negative length is not supported")
    return _string(value, "trunc")[: int(n)]


def _kind(value: Any) -> str:
    return "int" if isinstance(value, int) and not isinstance(value, bool) else type(value).__name__


def _eq(a: Any, *bs: Any) -> bool:
    """Go's eq: true when ``a`` equals any of ``bs``; values of different kinds are an error
    in Go (``eq 1 "1"``), not false."""
    for b in bs:
        if a is not None and b is not None and _kind(a) != _kind(b):
            raise TemplateError(f"eq of {a!r} and {b!r}: incompatible types for comparison")
        if isinstance(b, dict | list):
            raise TemplateError(f"eq of {b!r}: maps and lists are not comparable")
    return any(a == b for b in bs)


def _suffix(suffix: str, value: Any) -> str:
    s = _string(value, "trimSuffix")
    return s[: -len(suffix)] if suffix and s.endswith(suffix) else s


def _to_string(value: Any) -> str:
    return value if isinstance(value, str) else text(value)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quote": _quote,
    "toYaml": to_yaml,
    "indent": _indent,
    "nindent": lambda n, value: "\n" + _indent(n, value),
    "default": lambda fallback, value=None: value if truthy(value) else fallback,
    "required": _required,
    "printf": _printf,
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "not": lambda v: not truthy(v),
    "and": lambda *vs: next((v for v in vs if not truthy(v)), vs[-1]),
    "or": lambda *vs: next((v for v in vs if truthy(v)), vs[-1]),
    "empty": lambda v: not truthy(v),
    "b64enc": lambda s: base64.b64encode(_string(s, "b64enc").encode()).decode(),
    "trunc": _trunc,
    "trimSuffix": _suffix,
    "lower": lambda s: _string(s, "lower").lower(),
    "contains": lambda part, s: part in _string(s, "contains"),
    "toString": _to_string,
    "int": lambda v: int(v),
    "list": lambda *items: list(items),
    "until": lambda n: list(range(int(n))),
    "add1": lambda n: int(n) + 1,
}


class Files:
    """``.Files``: the chart's files outside templates/."""

    def __init__(self, chart: Path) -> None:
        self._chart = chart

    def Get(self, name: str) -> str:  # noqa: N802 (Helm's name)
        path = self._chart / name
        if not path.is_file():  # Helm renders "" for it: a typo would ship an empty object
            raise TemplateError(f".Files.Get {name!r}: no such file in {self._chart}")
        return path.read_text()


class Renderer:
    def __init__(self, defines: dict[str, list[Node]]) -> None:
        self.defines = defines

    def render(self, nodes: list[Node], dot: Any, scope: dict[str, Any]) -> str:
        """The text of ``nodes`` with ``dot`` as ``.``; variables declared here go into
        ``scope``, those of a block into a copy that ends with it."""
        out: list[str] = []
        for node in nodes:
            where = node.where
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "assign":
                scope[node.variables[0]] = self.pipeline(node.pipeline, dot, scope, where)
            elif node.kind == "output":
                value = self.pipeline(node.pipeline, dot, scope, where)
                out.append(self.show(value, where))
            elif node.kind == "if":
                test = truthy(self.pipeline(node.pipeline, dot, scope, where))
                out.append(self.render(node.body if test else node.orelse, dot, dict(scope)))
            elif node.kind == "with":
                value = self.pipeline(node.pipeline, dot, scope, where)
                if truthy(value):
                    out.append(self.render(node.body, value, dict(scope)))
                else:
                    out.append(self.render(node.orelse, dot, dict(scope)))
            elif node.kind == "range":
                out.append(self.range(node, dot, scope))
        return "".join(out)

    def range(self, node: Node, dot: Any, scope: dict[str, Any]) -> str:
        value = self.pipeline(node.pipeline, dot, scope, node.where)
        if isinstance(value, dict):
            items = sorted(value.items())  # Go visits a map's keys in sorted order
        elif isinstance(value, list) or value is None:
            items = list(enumerate(value or []))
        else:
            raise TemplateError(f"{node.where}: range over {value!r}: not a list or map")
        if not items:
            return self.render(node.orelse, dot, dict(scope))
        out = []
        for key, item in items:
            inner = dict(scope)
            if len(node.variables) == 2:
                inner[node.variables[0]], inner[node.variables[1]] = key, item
            elif len(node.variables) == 1:
                inner[node.variables[0]] = item
            out.append(self.render(node.body, item, inner))
        return "".join(out)

    @staticmethod
    def show(value: Any, where: str) -> str:
        """An action's output; a missing value prints nothing (Helm drops Go's <no value>)."""
        if value is None:
            return ""
        try:
            return text(value)
        except TemplateError as err:
            raise TemplateError(f"{where}: {err}") from None

    def pipeline(self, commands: list[Any], dot: Any, scope: dict[str, Any], where: str) -> Any:
        result: Any = _MISSING
        for command in commands:
            result = self.command(command, dot, scope, where, result)
        return result

    def command(self, command: list[Any], dot: Any, scope: dict, where: str, piped: Any) -> Any:
        head_kind, head = command[0]
        args = [self.operand(op, dot, scope, where) for op in command[1:]]
        if piped is not _MISSING:
            args.append(piped)
        if head_kind == "ident" and head in ("true", "false", "nil"):
            if args:
                raise TemplateError(f"{where}: {head} is not a function")
            return {"true": True, "false": False, "nil": None}[head]
        if head_kind == "ident":
            if head == "include":
                return self.include(args, where)
            if head not in FUNCTIONS:
                raise TemplateError(f"{where}: function {head!r} is not supported")
            return self.call(head, FUNCTIONS[head], args, where)
        value = self.operand(command[0], dot, scope, where)
        if callable(value):
            return self.call(head, value, args, where)
        if args:
            raise TemplateError(f"{where}: {head!r} is not a function")
        return value

    def include(self, args: list[Any], where: str) -> str:
        if len(args) != 2 or not isinstance(args[0], str):
            raise TemplateError(f"{where}: include takes a template name and one value")
        name, data = args
        if name not in self.defines:
            raise TemplateError(f"{where}: include of undefined template {name!r}")
        return self.render(self.defines[name], data, {"$": data})  # Go: $ is the data passed

    @staticmethod
    def call(name: str, function: Callable[..., Any], args: list[Any], where: str) -> Any:
        try:
            return function(*args)
        except TemplateError as err:
            raise TemplateError(f"{where}: {err}") from None
        except (TypeError, ValueError) as err:
            raise TemplateError(f"{where}: {name}: {err}") from None

    def operand(self, op: tuple[str, Any], dot: Any, scope: dict, where: str) -> Any:
        kind, value = op
        if kind == "string":
            return json.loads(value) if value.startswith('"') else value[1:-1]
        if kind == "number":
            return float(value) if "." in value else int(value)
        if kind == "pipeline":
            return self.pipeline(value, dot, scope, where)
        if kind == "field":
            return lookup(dot, value.strip(".").split(".") if value != "." else [], ".", where)
        if kind == "variable":
            name, *path = value.split(".")
            return lookup(scope[name], path, name, where)
        if kind == "ident":
            return self.command([op], dot, scope, where, _MISSING)
        raise TemplateError(f"{where}: unexpected {value!r}")


_MISSING = object()


def lookup(value: Any, path: list[str], start: str, where: str) -> Any:
    """``start.path`` as Go evaluates it: a missing map key is nil (Helm's missingkey=zero),
    a field of nil or of a non-map is an error."""
    seen = start
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, Files) and key == "Get":
            value = value.Get
        elif value is None:
            raise TemplateError(f"{where}: nil pointer evaluating {seen}.{key}")
        else:
            raise TemplateError(f"{where}: can't evaluate field {key} of {seen} ({value!r})")
        seen = f"{seen.rstrip('.')}.{key}"
    return value


# ---- the chart --------------------------------------------------------------------------------
def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def check_values(chart: Path, values: dict[str, Any]) -> None:
    """Validates merged values against the chart's values.schema.json, as Helm does.

    Raises:
        ValuesError: one line naming the first bad value, what is wrong and the schema.
    """
    path = chart / "values.schema.json"
    if not path.exists():
        return
    try:
        import jsonschema
    except ImportError:
        raise ValuesError(
            f"{path} needs jsonschema to check values: pip install jsonschema"
        ) from None
    schema = json.loads(path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(values))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(the values)"
        raise ValuesError(f"values: {where}: {error.message} (see {path.name})")


def render_chart(
    chart: Path,
    values: list[dict[str, Any]] | None = None,
    name: str = "hai",
    namespace: str = "hai",
) -> dict[str, str]:
    """Every template of ``chart`` rendered: template path -> text (as ``helm template``
    prints them, before splitting into documents).

    Raises:
        ValuesError: the merged values do not match the chart's values.schema.json.
        TemplateError: a template uses what this renderer does not implement, or fails.
    """
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    merged = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for layer in values or []:
        merged = merge(merged, layer)
    check_values(chart, merged)
    defines: dict[str, list[Node]] = {}
    parsed = {}
    for path in sorted((chart / "templates").iterdir()):
        if path.suffix not in (".yaml", ".yml", ".tpl"):
            continue
        where = f"templates/{path.name}"
        parsed[where] = parse(path.read_text(), where, defines)
    context = {
        "Values": merged,
        "Release": {"Name": name, "Namespace": namespace, "Service": "Helm"},
        "Chart": {
            "Name": meta["name"],
            "Version": meta["version"],
            "AppVersion": meta.get("appVersion", ""),
        },
        "Files": Files(chart),
    }
    renderer = Renderer(defines)
    return {
        where: renderer.render(nodes, context, {"$": context})
        for where, nodes in parsed.items()
        if not Path(where).name.startswith("_")
    }


def manifest(rendered: dict[str, str], chart_name: str) -> str:
    """The rendered templates as one YAML stream, the way ``helm template`` prints them."""
    return "".join(
        f"---\n# Source: {chart_name}/{where}\n{text.strip()}\n"
        for where, text in rendered.items()
        if text.strip()
    )


def documents(rendered: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(template, object) for every non-empty YAML document of the rendered chart."""
    out = []
    for where, text in rendered.items():
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((where, doc))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chart", type=Path)
    parser.add_argument("-f", "--values", action="append", type=Path, default=[])
    parser.add_argument("--name", default="hai")
    parser.add_argument("-n", "--namespace", default="hai")
    args = parser.parse_args(argv)
    layers = [yaml.safe_load(p.read_text()) or {} for p in args.values]
    try:
        rendered = render_chart(args.chart, layers, args.name, args.namespace)
    except TemplateError as err:
        print(f"render: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(manifest(rendered, args.chart.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
