"""The apps' imports keep the direction docs/architecture.md gives them.

Read from the source (no import runs): every `import` of a project module, where it sits, and what kind of
module makes it. A failure names the import and the rule it breaks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top: an app's domain modules import only from apps below it (docs/architecture.md).
LAYERS = ("accounts", "audit", "policies", "moderation", "inference_worker", "reviews")
PROJECT = "config"
# The interface of an app (HTTP, admin, forms, templates, commands, reports) sits above every app's domain:
# it may read any app's models, selectors and services, but never another app's interface.
INTERFACE_PARTS = {"views", "urls", "api", "admin", "forms", "templatetags", "management", "web", "exports"}
# Pure modules (no database, no other app): the harmony format, used by policies (token counts) and by the
# engine. Anyone may import them.
LIBRARIES = {"inference_worker.prompts", "inference_worker.vocabulary"}
# Interface modules every app's interface shares, with why.
SHARED_INTERFACE = {
    "audit.admin": "the audited admin base every app's admin extends",
    "reviews.web": "the site shell: a page with the navigation every page shows",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted
    line: int
    nested: bool  # inside a function


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_modules() -> list[Path]:
    paths = []
    for app in (*LAYERS, PROJECT):
        paths += [
            p for p in (ROOT / app).rglob("*.py") if "migrations" not in p.parts and "testing" not in p.parts
        ]
    return sorted(paths)


def imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text())
    module = module_name(path)
    nested_nodes = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for sub in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from app import module` imports the module; `from app.module import name` the module.
            base = node.module
            targets = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        for target in targets:
            if app_of(target) is not None:
                found.append(Import(module, target, node.lineno, id(node) in nested_nodes))
    return found


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def app_of(dotted: str) -> str | None:
    top = dotted.split(".")[0]
    return top if top in (*LAYERS, PROJECT) else None


def is_interface(dotted: str) -> bool:
    parts = dotted.split(".")[1:]
    return any(p in INTERFACE_PARTS or p.startswith(("views_", "forms_")) for p in parts)


ALL_IMPORTS = [i for path in project_modules() for i in imports_of(path)]


def test_it_finds_the_imports_it_checks() -> None:
    # A walker that found nothing would pass every rule below.
    assert len(ALL_IMPORTS) > 300
    assert Import("reviews.services", "moderation.models", 0, False).target in {i.target for i in ALL_IMPORTS}


def test_it_keeps_domain_imports_pointing_down() -> None:
    wrong = []
    for i in ALL_IMPORTS:
        source, target = app_of(i.module), app_of(i.target)
        if source == target or PROJECT in (source, target) or is_interface(i.module) or i.target in LIBRARIES:
            continue
        assert source is not None and target is not None
        if LAYERS.index(target) > LAYERS.index(source):
            wrong.append(f"{i.module}:{i.line} imports {i.target} ({target} is above {source})")
    assert wrong == []


def test_it_keeps_each_apps_interface_to_itself() -> None:
    wrong = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if is_interface(i.module)
        and is_interface(i.target)
        and app_of(i.module) != app_of(i.target)
        and PROJECT not in (app_of(i.module), app_of(i.target))
        and i.target not in SHARED_INTERFACE
        and i.module not in SHARED_INTERFACE  # the shell asks every app what this user may open
        and not i.module.endswith(".urls")  # a URL conf assembles the views of several apps
    ]
    assert wrong == []


def test_it_has_no_import_hidden_in_a_function() -> None:
    # AppConfig.ready() connecting signals is Django's own idiom; anything else would hide a cycle.
    nested = [f"{i.module}:{i.line} imports {i.target}" for i in ALL_IMPORTS if i.nested]
    assert nested == ["reviews.apps:11 imports reviews.signals"]


def test_it_keeps_libraries_and_the_project_glue_apps_import_free_of_apps() -> None:
    used_glue = {i.target for i in ALL_IMPORTS if app_of(i.target) == PROJECT and app_of(i.module) != PROJECT}
    leaves = LIBRARIES | used_glue
    wrong = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in ALL_IMPORTS
        if i.module in leaves and app_of(i.target) != PROJECT and i.target not in LIBRARIES
    ]
    assert used_glue  # config.publish, config.db_router... are in use
    assert wrong == []
