"""Every string the plugin translates has a finished French translation in i18n/rs_assistant_fr.ts.

    .venv/bin/python -m pytest -p no:pytest_qgis -p no:pytest-qt tests/qgis/test_translations.py -q

The strings are found in the source the way the plugin marks them (pylupdate5 does not know a
module's ``tr`` helper's context): ``QCoreApplication.translate("Context", "text")``, a module's
``tr("text")`` whose body calls ``translate("Context", text)``, and ``self.tr("text")`` in a
class (its context is the class name).
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TS = ROOT / "i18n" / "rs_assistant_fr.ts"
PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _tr_context(tree: ast.Module) -> str | None:
    """The context of a module-level ``def tr(text): return QCoreApplication.translate("Ctx", text)``."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "tr":
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "translate" and call.args:
                    return _literal(call.args[0])
    return None


def source_strings() -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / "rs_assistant").rglob("*.py"):
        if "engine" in path.relative_to(ROOT / "rs_assistant").parts[:1]:
            continue  # the engine's messages are English by design (its own process, no Qt)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_context = _tr_context(tree)
        classes = {}
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            for child in ast.walk(cls):
                classes.setdefault(id(child), cls.name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "translate" and len(node.args) >= 2:
                context, text = _literal(node.args[0]), _literal(node.args[1])
                if context and text:
                    found.add((context, text))
            elif name == "tr" and node.args and _literal(node.args[0]):
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
                    found.add((classes.get(id(node), "?"), _literal(node.args[0])))
                elif isinstance(func, ast.Name) and module_context:
                    found.add((module_context, _literal(node.args[0])))
    return found


def translations() -> dict[tuple[str, str], tuple[str, str | None]]:
    out = {}
    for context in ET.parse(TS).getroot().iter("context"):
        name = context.findtext("name")
        for message in context.iter("message"):
            translation = message.find("translation")
            out[(name, message.findtext("source"))] = (translation.text or "", translation.get("type"))
    return out


def test_every_translated_string_has_a_finished_french_translation():
    have = translations()
    wanted = source_strings()
    assert len(wanted) > 150  # the scan finds the plugin's strings
    missing = sorted(k for k in wanted if k not in have)
    assert not missing, "\n".join(f"{c}: {s}" for c, s in missing)
    unfinished = sorted(
        k for k, (text, kind) in have.items() if not text.strip() or kind in ("unfinished", "obsolete", "vanished")
    )
    assert not unfinished, unfinished


def test_translations_keep_the_placeholders():
    for (context, source), (text, _kind) in translations().items():
        assert sorted(PLACEHOLDER.findall(source)) == sorted(PLACEHOLDER.findall(text)), (context, source, text)
