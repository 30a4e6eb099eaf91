"""Layered settings: what the configuration loaders of fs3, hai and deepseek share.

Each package describes its settings as pydantic models (groups of defaulted fields) and
loads them in one function: a YAML file, then environment variables named
``<PREFIX><GROUP>__<FIELD>`` (pydantic-settings' nested naming), then explicit overrides,
each layer replacing single fields of the one below. Every layer goes through the same
pydantic validation (its lax mode), so one coercion rule holds for all of them: the
strings ``"true"``/``"1"``/``"false"``/``"0"`` are booleans, ``"2"`` is an int, an int
stands in for a float, and anything else of the wrong kind is an error. A failure is a
package ``ConfigError`` with one line per problem naming the source, the field's dotted
path and the value.

fs3 is the lowest layer that hai and deepseek import, so the shared part lives here;
hfreduce, which imports no other package, has one flat model and words its errors alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

Model = TypeVar("Model", bound=BaseModel)


class Settings(BaseSettings):
    """Root of a package's settings: its ``model_config`` names the environment variables.

    A loader builds it from layers with :func:`layered`; built directly, it is its defaults
    and keyword arguments, as any model (the process environment is read by loaders only).
    """

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class Environment(EnvSettingsSource):
    """The ``<PREFIX><GROUP>__<FIELD>`` variables of ``environ`` as nested settings values.

    Only names with the nested delimiter count: a bare ``<PREFIX><GROUP>`` variable (such
    as ``HAI_SERVER``, the CLI's server address) is something else with the same prefix.
    ``aliases`` maps older single names to the nested ones (``HAI_STATE_DIR`` to
    ``HAI_SERVER__STATE_DIR``); the nested name wins when both are set.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        environ: Mapping[str, str],
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        delimiter = settings_cls.model_config.get("env_nested_delimiter") or "__"
        chosen = {name: value for name, value in environ.items() if delimiter in name}
        for old, nested in (aliases or {}).items():
            if old in environ:
                chosen.setdefault(nested, environ[old])
        self._chosen = chosen
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The base class reads os.environ; loaders take the environment as an argument.
        return {name.lower(): value for name, value in self._chosen.items()}


def read_yaml(path: str | os.PathLike[str], what: str, error: type[Exception]) -> dict[str, Any]:
    """The mapping in the YAML file at ``path`` (empty for an empty file).

    Raises:
        error: the file cannot be read or parsed, or holds something other than a mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise error(f"cannot read {what} file {path}: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{what} file {path} must hold a mapping of settings, not {data!r}")
    return data


def merged(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with the values of ``top`` put in, nested mappings merged key by key."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        both = isinstance(below, Mapping) and isinstance(value, Mapping)
        out[key] = merged(below, value) if both else value
    return out


def layered(
    model: type[Model],
    layers: Sequence[tuple[str, Mapping[str, Any]]],
    what: str,
    error: type[Exception],
) -> Model:
    """``model`` built from ``layers`` (``(name, values)``, lowest first), merged.

    Raises:
        error: one line per problem, ``<what> (<layers that set it>): <field.path>: <why>``.
    """
    values: dict[str, Any] = {}
    for _, layer in layers:
        values = merged(values, layer)
    try:
        return model.model_validate(values)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            where = [name for name, layer in layers if _holds(layer, problem["loc"])]
            reason = _describe(problem, model)
            lines.append(f"{what} ({', '.join(where) or 'defaults'}): {reason}")
        raise error("\n".join(lines)) from None


def _holds(values: Mapping[str, Any], path: tuple[int | str, ...]) -> bool:
    for part in path:
        if not isinstance(values, Mapping) or part not in values:
            return False
        values = values[part]
    return True


def _describe(problem: ErrorDetails, model: type[BaseModel]) -> str:
    """One pydantic error of ``model`` as ``<field.path>: <what is wrong>, got <value>``."""
    field = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "extra_forbidden":
        return f"{field}: unknown setting; known: {', '.join(_known(model, problem['loc'][:-1]))}"
    reason = problem["ctx"]["error"] if problem["type"] == "value_error" else problem["msg"]
    if isinstance(problem["input"], Mapping):  # a check across a group names its values
        return f"{field}: {reason}"
    return f"{field}: {reason}, got {problem['input']!r}"


def _known(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The field names of the group at ``path`` in ``model``."""
    group: Any = model
    for part in path:
        group = group.model_fields[part].annotation
    return sorted(group.model_fields)
