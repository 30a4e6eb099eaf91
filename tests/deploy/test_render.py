"""deploy/render.py: what it renders, checked against the text Helm prints for the same
template, and one test per construct it refuses rather than render differently."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import render


def run(source: str, values: dict[str, Any] | None = None, helpers: str = "") -> str:
    """``source`` rendered with ``.Values`` = ``values`` and the defines of ``helpers``."""
    defines: dict[str, list[Any]] = {}
    render.parse(helpers, "templates/_helpers.tpl", defines)
    nodes = render.parse(source, "templates/t.yaml", defines)
    context = {"Values": values or {}, "Release": {"Name": "r", "Namespace": "n"}}
    return render.Renderer(defines).render(nodes, context, {"$": context})


RENDERS = {
    "trimming": ("a:  {{- 1 -}}  \n  b", {}, "a:1b"),
    "a comment": ("{{/* why */}}x{{- /* trimmed */ -}} y", {}, "xy"),
    "a missing value prints nothing": ("[{{ .Values.nope }}]", {}, "[]"),
    "booleans as Go prints them": (
        "{{ .Values.on }} {{ .Values.on | toString }}",
        {"on": True},
        "true true",
    ),
    "if, else if, else": (
        "{{ range list 1 2 3 }}{{ if eq . 1 }}a{{ else if eq . 2 }}b{{ else }}c{{ end }}{{ end }}",
        {},
        "abc",
    ),
    "with and its else": (
        "{{ with .Values.a }}{{ .b }}{{ else }}none{{ end }}",
        {"a": {"b": "x"}},
        "x",
    ),
    "with's else keeps the dot": (
        "{{ with .Values.no }}x{{ else }}{{ .Values.y }}{{ end }}",
        {"y": "kept"},
        "kept",
    ),
    "range over a map in key order": (
        "{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }};{{ end }}",
        {"m": {"b": 2, "a": 1}},
        "a=1;b=2;",
    ),
    "range's else": ("{{ range .Values.none }}x{{ else }}empty{{ end }}", {"none": []}, "empty"),
    "$ is the root inside range": (
        "{{ range list 1 }}{{ $.Release.Name }}{{ end }}",
        {},
        "r",
    ),
    "a variable shadowed in a block keeps its value after it": (
        "{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}",
        {},
        "21",
    ),
    "printf %s %v %d %%": ('{{ printf "%s:%v/%d%%" "h" 5 6 }}', {}, "h:5/6%"),
    "quote skips nil like Sprig": ('{{ quote "a" .Values.nope "b" }}', {}, '"a" "b"'),
    "quote of a boolean": ("{{ quote true }}", {}, '"true"'),
    "trunc and trimSuffix": ('{{ "abc-def" | trunc 4 | trimSuffix "-" }}', {}, "abc"),
    "default": (
        '{{ .Values.a | default "d" }} {{ .Values.b | default "d" }}',
        {"b": "set"},
        "d set",
    ),
    "nindent and toYaml": (
        "x:{{ toYaml .Values.m | nindent 2 }}",
        {"m": {"b": [1], "a": 1}},
        "x:\n  a: 1\n  b:\n  - 1",
    ),
    "parentheses": ('{{ (printf "%s" "a") | quote }}', {}, '"a"'),
    "until and add1": (
        "{{ range $i := until 3 }}{{ if $i }},{{ end }}{{ add1 $i }}{{ end }}",
        {},
        "1,2,3",
    ),
    "and, or and not return what Go returns": (
        '{{ or "" "b" }} {{ and "a" "" "c" }}|{{ not "" }}',
        {},
        "b |true",
    ),
}


@pytest.mark.parametrize("case", list(RENDERS), ids=list(RENDERS))
def test_renders_as_helm_does(case: str) -> None:
    source, values, expected = RENDERS[case]
    assert run(source, values) == expected


def test_dollar_inside_an_included_template_is_the_value_passed_to_include() -> None:
    """Go sets $ to the data of a template invocation, not to the caller's root."""
    helpers = '{{- define "name" -}}{{ $.n }}/{{ .n }}{{- end -}}'
    assert run('{{ include "name" .Values }}', {"n": "v"}, helpers) == "v/v"


def test_variables_of_the_caller_are_not_visible_in_an_included_template() -> None:
    helpers = '{{- define "leak" -}}{{ $x }}{{- end -}}'
    with pytest.raises(render.TemplateError, match=r"_helpers.tpl:1: undefined variable \$x"):
        run('{{ $x := 1 }}{{ include "leak" . }}', {}, helpers)


REFUSED = {
    "else with": (
        "{{ with .Values.a }}a{{ else with .Values.b }}b{{ end }}",
        "'else with' in with",
    ),
    "else if in range": ("{{ range .Values.a }}{{ else if true }}{{ end }}", "'else if' in range"),
    "a second else": ("{{ if true }}{{ else }}{{ else }}{{ end }}", "a second else in one if"),
    "else outside a block": ("{{ else }}", "else outside if"),
    "end outside a block": ("x{{ end }}", "end outside a block"),
    "an unclosed block": ("{{ if true }}", "t.yaml:1: if is not closed"),
    "printf %q": ('{{ printf "%q" "a" }}', "printf verb %q is not supported"),
    "printf with a width": ('{{ printf "%5d" 1 }}', "printf verb %5 is not supported"),
    "printf %s of a number": ('{{ printf "%s" 1 }}', "printf %s of 1, not a string: use %v"),
    "printf with too few arguments": ('{{ printf "%s %s" "a" }}', "more verbs than arguments"),
    "printf with too many arguments": ('{{ printf "%s" "a" "b" }}', "more arguments than verbs"),
    "a negative trunc": ('{{ "abc" | trunc -1 }}', "trunc -1: a negative length is not supported"),
    "a variable used after the if that declares it": (
        "{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}",
        r"t.yaml:1: undefined variable \$x",
    ),
    "a variable used after the range that declares it": (
        "{{ range $i := list 1 }}{{ end }}\n{{ $i }}",
        r"t.yaml:2: undefined variable \$i",
    ),
    "a variable of the if branch used in its else": (
        "{{ if true }}{{ $x := 1 }}{{ else }}{{ $x }}{{ end }}",
        r"undefined variable \$x",
    ),
    "assignment with =": ("{{ $x := 1 }}{{ $x = 2 }}", "assignment with '=' is not supported"),
    "a declaration in if": (
        "{{ if $x := 1 }}{{ end }}",
        "declaring a variable here is not supported",
    ),
    "template": ('{{ template "x" . }}', "'template' is not supported; use include"),
    "block": ('{{ block "x" . }}{{ end }}', "'block' is not supported"),
    "break": ("{{ range list 1 }}{{ break }}{{ end }}", "'break' is not supported"),
    "define inside a block": (
        '{{ if true }}{{ define "x" }}{{ end }}{{ end }}',
        "define inside a block",
    ),
    "a comment with more after it": ("{{/* c */ 1 }}", "a comment must be the whole action"),
    "an unknown function": ("{{ len .Values }}", "function 'len' is not supported"),
    "printing a float": ("{{ 1.0 }}", "printing the float 1.0 is not supported"),
    "printing a map": ("{{ .Values }}", "printing a map"),
    "a field of a missing value": ("{{ .Values.a.b }}", r"nil pointer evaluating \.Values\.a\.b"),
    "a field of a string": ('{{ $s := "x" }}{{ $s.b }}', r"can't evaluate field b of \$s"),
    "eq of different kinds": ('{{ eq 1 "1" }}', "incompatible types for comparison"),
    "a string function given a number": (
        '{{ 5 | trimSuffix "x" }}',
        "trimSuffix takes a string, not 5",
    ),
    "range over a number": ("{{ range 3 }}{{ end }}", "range over 3: not a list or map"),
    "a function's own failure": ('{{ int "x" }}', "t.yaml:1: int: invalid literal"),
    "required": ('{{ required "set a" .Values.a }}', "t.yaml:1: set a"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_refuses_what_it_does_not_implement_naming_the_line(case: str) -> None:
    source, message = REFUSED[case]
    with pytest.raises(render.TemplateError, match=message) as caught:
        run(source)
    assert "\n" not in str(caught.value)  # one line
    assert str(caught.value).startswith("templates/t.yaml:")


def test_a_missing_chart_file_is_an_error_not_an_empty_object(tmp_path) -> None:
    files = render.Files(tmp_path)
    with pytest.raises(render.TemplateError, match="no such file"):
        files.Get("files/nope.yaml")
