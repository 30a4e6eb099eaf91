"""Renders the Helm chart without Helm: the subset of Go templates our chart uses.

Helm is not packaged for Debian and cannot be downloaded on our machines, so the tests
(tests/hai/test_deploy.py) render every template with this file and validate the result
offline with kubernetes-validate. Where a ``helm`` binary exists, the tests render with
``helm template`` as well and validate that too.

    python deploy/render.py deploy/helm/hai [-f values.yaml]... [--name hai] [-n NAMESPACE]

Supported, as Go's text/template and Helm define them: ``{{ }}`` with ``{{-``/``-}}``
trimming, comments, ``define``/``include``, ``if``/``else if``/``else``, ``range`` (with
``$i, $v :=``), ``with``, variables, pipelines, parentheses, and the functions in
:data:`FUNCTIONS` plus ``.Files.Get``. Anything else is an error naming the template and
the construct, so a chart change that needs more fails the tests instead of rendering
wrongly. Values merge like Helm's ``-f``: later files win, maps merge key by key.
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
    kind: str  # text, output, if, range, with
    text: str = ""
    pipeline: list[Any] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)
    variables: list[str] = field(default_factory=list)


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


def parse_pipeline(tokens: list[tuple[str, str]], where: str) -> list[Any]:
    """A pipeline as a list of commands; a command is a list of operands, an operand is a
    token or a nested pipeline (parentheses)."""
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
        elif kind == "punct":
            raise TemplateError(f"{where}: unexpected {value!r}")
        else:
            commands[-1].append((kind, value))
    if stack or any(not c for c in commands):
        raise TemplateError(f"{where}: malformed pipeline")
    return commands


def parse(source: str, where: str, defines: dict[str, list[Node]]) -> list[Node]:
    """Parses a template into nodes; ``define`` blocks go into ``defines``."""
    pieces: list[tuple[str, str]] = []  # ("text", s) or ("action", s)
    pos = 0
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        pieces.append(("text", text))
        pieces.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            while pos < len(source) and source[pos].isspace():
                pos += 1
    pieces.append(("text", source[pos:]))

    root: list[Node] = []
    stack: list[tuple[Node | None, list[Node], str]] = [(None, root, "root")]
    for kind, value in pieces:
        body = stack[-1][1]
        if kind == "text":
            if value:
                body.append(Node("text", text=value))
            continue
        action = value.strip()
        if action.startswith("/*"):
            continue
        word = action.split(None, 1)[0] if action else ""
        rest = action[len(word) :].strip()
        if word == "define":
            name = json.loads(rest)
            node = Node("define", text=name)
            stack.append((node, node.body, "define"))
        elif word in ("if", "with"):
            node = Node(word, pipeline=parse_pipeline(tokenize(rest, where), where))
            body.append(node)
            stack.append((node, node.body, word))
        elif word == "range":
            tokens = tokenize(rest, where)
            variables: list[str] = []
            if any(k == "declare" for k, _ in tokens):
                split = next(i for i, (k, _) in enumerate(tokens) if k == "declare")
                variables = [v for k, v in tokens[:split] if k == "variable"]
                tokens = tokens[split + 1 :]
            node = Node("range", pipeline=parse_pipeline(tokens, where), variables=variables)
            body.append(node)
            stack.append((node, node.body, "range"))
        elif word == "else":
            owner, _, what = stack.pop()
            if owner is None:
                raise TemplateError(f"{where}: else outside a block")
            if rest.startswith("if "):  # else if: a nested if in the else branch
                nested = Node("if", pipeline=parse_pipeline(tokenize(rest[3:], where), where))
                owner.orelse.append(nested)
                stack.append((owner, owner.orelse, "elif-" + what))
                stack.append((nested, nested.body, "if"))
            else:
                stack.append((owner, owner.orelse, what))
        elif word == "end":
            owner, _, what = stack.pop()
            while stack[-1][2].startswith("elif-"):  # an else-if chain ends with its if
                owner, _, what = stack.pop()
                what = what[len("elif-") :]
            if owner is None:
                raise TemplateError(f"{where}: end outside a block")
            if what == "define":
                defines[owner.text] = owner.body
        elif word.startswith("$") and ":=" in action:
            tokens = tokenize(action, where)
            if len(tokens) < 3 or tokens[0][0] != "variable" or tokens[1][0] != "declare":
                raise TemplateError(f"{where}: cannot read {action!r}")
            body.append(
                Node("assign", pipeline=parse_pipeline(tokens[2:], where), variables=[tokens[0][1]])
            )
        elif word in ("template", "block", "break", "continue"):
            raise TemplateError(f"{where}: {word!r} is not supported; use include")
        else:
            body.append(Node("output", pipeline=parse_pipeline(tokenize(action, where), where)))
    if len(stack) != 1:
        raise TemplateError(f"{where}: {stack[-1][2]} is not closed with end")
    return root


# ---- evaluation -------------------------------------------------------------------------------
def truthy(value: Any) -> bool:
    return bool(value) if value is not None else False


def to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n: int, text: Any) -> str:
    pad = " " * int(n)
    return "\n".join(pad + line if line else line for line in str(text).split("\n"))


def _printf(fmt: str, *args: Any) -> str:
    return re.sub(r"%[vq]", "%s", fmt) % args


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateError(message)
    return value


def _quote(*values: Any) -> str:
    return " ".join(json.dumps("" if v is None else str(v)) for v in values)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quote": _quote,
    "toYaml": to_yaml,
    "toJson": lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")),
    "indent": _indent,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "default": lambda fallback, value=None: value if truthy(value) else fallback,
    "required": _required,
    "printf": _printf,
    "eq": lambda a, *bs: any(a == b for b in bs),
    "ne": lambda a, b: a != b,
    "not": lambda v: not truthy(v),
    "and": lambda *vs: next((v for v in vs if not truthy(v)), vs[-1]),
    "or": lambda *vs: next((v for v in vs if truthy(v)), vs[-1]),
    "empty": lambda v: not truthy(v),
    "b64enc": lambda s: base64.b64encode(str(s).encode()).decode(),
    "trunc": lambda n, s: str(s)[: int(n)],
    "trimSuffix": lambda suffix, s: str(s)[: -len(suffix)] if str(s).endswith(suffix) else str(s),
    "lower": lambda s: str(s).lower(),
    "contains": lambda part, s: str(part) in str(s),
    "toString": lambda v: "" if v is None else Renderer.string(v),
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
        return (self._chart / name).read_text()


class Renderer:
    def __init__(self, defines: dict[str, list[Node]]) -> None:
        self.defines = defines

    def render(self, nodes: list[Node], dot: Any, scope: dict[str, Any], where: str) -> str:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "assign":
                scope[node.variables[0]] = self.pipeline(node.pipeline, dot, scope, where)
            elif node.kind == "output":
                value = self.pipeline(node.pipeline, dot, scope, where)
                out.append("" if value is None else self.string(value))
            elif node.kind == "if":
                branch = (
                    node.body
                    if truthy(self.pipeline(node.pipeline, dot, scope, where))
                    else node.orelse
                )
                out.append(self.render(branch, dot, scope, where))
            elif node.kind == "with":
                value = self.pipeline(node.pipeline, dot, scope, where)
                if truthy(value):
                    out.append(self.render(node.body, value, scope, where))
                else:
                    out.append(self.render(node.orelse, dot, scope, where))
            elif node.kind == "range":
                value = self.pipeline(node.pipeline, dot, scope, where)
                items = (
                    sorted(value.items())
                    if isinstance(value, dict)
                    else list(enumerate(value or []))
                )
                if not items:
                    out.append(self.render(node.orelse, dot, scope, where))
                for key, item in items:
                    inner = dict(scope)
                    if len(node.variables) == 2:
                        inner[node.variables[0]], inner[node.variables[1]] = key, item
                    elif len(node.variables) == 1:
                        inner[node.variables[0]] = item
                    out.append(self.render(node.body, item, inner, where))
        return "".join(out)

    @staticmethod
    def string(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict | list):
            return json.dumps(value)  # Go prints map[...]; never wanted in a manifest
        return str(value)

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
            return {"true": True, "false": False, "nil": None}[head]
        if head_kind == "ident":
            if head == "include":
                name, data = args
                if name not in self.defines:
                    raise TemplateError(f"{where}: include of undefined template {name!r}")
                return self.render(self.defines[name], data, {"$": scope["$"]}, where)
            if head not in FUNCTIONS:
                raise TemplateError(f"{where}: function {head!r} is not supported")
            return FUNCTIONS[head](*args)
        value = self.operand(command[0], dot, scope, where)
        if callable(value):
            return value(*args)
        if args:
            raise TemplateError(f"{where}: {head!r} is not a function")
        return value

    def operand(self, op: tuple[str, Any], dot: Any, scope: dict, where: str) -> Any:
        kind, value = op
        if kind == "string":
            return json.loads(value) if value.startswith('"') else value[1:-1]
        if kind == "number":
            return float(value) if "." in value else int(value)
        if kind == "pipeline":
            return self.pipeline(value, dot, scope, where)
        if kind == "field":
            return lookup(dot, value.strip(".").split(".") if value != "." else [])
        if kind == "variable":
            name, *path = value.split(".")
            if name not in scope:
                raise TemplateError(f"{where}: undefined variable {name}")
            return lookup(scope[name], path)
        if kind == "ident":
            return self.command([op], dot, scope, where, _MISSING)
        raise TemplateError(f"{where}: unexpected {value!r}")


_MISSING = object()


def lookup(value: Any, path: list[str]) -> Any:
    for key in path:
        if value is None:
            return None
        if isinstance(value, dict):
            value = value.get(key)
        else:
            value = getattr(value, key, None)
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


def render_chart(
    chart: Path,
    values: list[dict[str, Any]] | None = None,
    name: str = "hai",
    namespace: str = "hai",
) -> dict[str, str]:
    """Every template of ``chart`` rendered: template path -> text (as ``helm template``
    prints them, before splitting into documents)."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    merged = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for layer in values or []:
        merged = merge(merged, layer)
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
        where: renderer.render(nodes, context, {"$": context}, where)
        for where, nodes in parsed.items()
        if not Path(where).name.startswith("_")
    }


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
    for where, text in rendered.items():
        if text.strip():
            print(f"---\n# Source: {args.chart.name}/{where}\n{text.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
