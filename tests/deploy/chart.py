"""deploy/render.py loaded as a module (deploy/ is no package), and the chart's paths."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "hai"

_spec = importlib.util.spec_from_file_location("hai_chart_render", DEPLOY / "render.py")
assert _spec is not None and _spec.loader is not None
render = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = render  # its dataclasses look their module up
_spec.loader.exec_module(render)

REQUIRED = {
    "auth": {"adminToken": "t"},
    "fs3": {
        "security": {"secret": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="},
        "auth": {"adminToken": "fs3-t"},
    },
}
"""The values `helm install` cannot do without: hai's and fs3's admin tokens, fs3's secret."""
