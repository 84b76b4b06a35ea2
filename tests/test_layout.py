"""The shape every service keeps (docs/decisions.md, "One shape for every service"), checked on the source.

- a servicer translates: no ``server.py`` over 350 lines;
- the rules are plain Python: no domain module (``domain.py`` or a module of a ``domain/`` package) imports
  grpc, redis, the service's store or server, or reads the environment;
- nothing outside ``services/runtime`` imports a private runtime module, and the runtime imports no service;
- every service folder holds only the files of the shape (plus its own named sub-packages and policy files);
- the edge client depends on the generated contracts only, never on ``services``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"
#: The files of the shape (docs/decisions.md, "One shape for every service"); ``metrics.py`` holds a service's
#: Prometheus instruments.
SHAPE = {"__init__.py", "__main__.py", "server.py", "usecases.py", "domain.py", "store.py", "workers.py",
         "config.py", "convert.py", "metrics.py"}
#: Modules beside the shape, each named for its one job, with why it is not one of the shape's files.
EXTRA_MODULES = {
    "tender/eligibility.py": "the eligibility policy file's typed model and loader (the tender's own policy file)",
    "gateway/webhooks/destinations.py": "the SSRF guard of webhook destinations, a rule set of its own",
    "telemetry/peers.py": "the truck behind a call, from its own or the gateway's relayed certificate: the transport's "
                          "authentication, which the servicer calls and no use case needs",
    "edi/folders.py": "the folder transport's layout (a partner's in/, out/, archive/, failed/), which uploads are "
                      "complete, and the whole-file writes to out/: shared by the poller and the SFTP door",
    "edi/archive.py": "the raw archive of every interchange in or out (an object store, not the Redis store)",
    "edi/sftp.py": "the SFTP door (asyncssh): each partner's keys, jailed in its own folders",
    "edi/check.py": "`haulmesh edi check`: a partner's sample 204 through the service's own reading and mapping, "
                    "offline, and the field map measured on them (the runtime's CLI runs it by name)",
}


def _python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                out.append(node.module)
            elif node.level:  # relative: resolve against the file's package
                package = path.parent.relative_to(ROOT).parts[:len(path.parent.relative_to(ROOT).parts)
                                                             - node.level + 1]
                out.append(".".join([*package, *([node.module] if node.module else [])]))
    return out


def _service_dirs() -> list[Path]:
    return [d for d in sorted(SERVICES.iterdir()) if d.is_dir() and d.name not in ("runtime", "__pycache__")]


def _domain_modules() -> list[Path]:
    found = []
    for path in _python_files(SERVICES):
        if "runtime" in path.relative_to(SERVICES).parts[:1]:
            continue
        if path.name == "domain.py" or "domain" in path.relative_to(SERVICES).parts[:-1]:
            found.append(path)
    return found


@pytest.mark.parametrize("server", sorted(SERVICES.rglob("server.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_servicer_only_translates(server: Path) -> None:
    assert len(server.read_text().splitlines()) <= 350


def test_there_are_domain_modules_to_check() -> None:
    assert len(_domain_modules()) >= 6


@pytest.mark.parametrize("module", _domain_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_domain_is_plain_python(module: Path) -> None:
    forbidden = [m for m in _imports(module)
                 if m.split(".")[0] in ("grpc", "redis", "asyncio", "httpx", "os")
                 or m.endswith((".store", ".server", ".usecases", ".workers"))]
    assert forbidden == [], f"{module.relative_to(ROOT)} imports {forbidden}"
    assert "os.environ" not in module.read_text()


def test_no_private_runtime_import_outside_the_runtime() -> None:
    offenders = []
    for path in _python_files(SERVICES, ROOT / "scripts", ROOT / "tests", ROOT / "edge_client"):
        relative = path.relative_to(ROOT)
        if relative.parts[:2] in (("services", "runtime"), ("tests", "runtime")):
            continue  # the runtime itself, and the tests of its internals
        # A private module at any depth: services.runtime._audit, services.runtime.objectstore._s3, ...
        offenders += [f"{relative}: {m}" for m in _imports(path)
                      if m.startswith("services.runtime.") and any(part.startswith("_") for part in m.split(".")[2:])]
    assert offenders == []


def test_the_runtime_imports_no_service() -> None:
    offenders = [f"{path.relative_to(ROOT)}: {m}" for path in _python_files(SERVICES / "runtime")
                 for m in _imports(path) if m.startswith("services.") and not m.startswith("services.runtime")]
    assert offenders == []


def test_the_edge_client_depends_on_the_contracts_only() -> None:
    offenders = [f"{path.relative_to(ROOT)}: {m}" for path in _python_files(ROOT / "edge_client")
                 for m in _imports(path) if m.split(".")[0] == "services"]
    assert offenders == []


@pytest.mark.parametrize("service", _service_dirs(), ids=lambda d: d.name)
def test_a_service_folder_has_the_shape(service: Path) -> None:
    strays = []
    for path in _python_files(service):
        relative = path.relative_to(SERVICES).as_posix()
        inside = path.relative_to(service).parts
        if len(inside) == 1 and path.name not in SHAPE and relative not in EXTRA_MODULES:
            strays.append(relative)
        # A sub-package is a part of the shape grown into a package (domain/, usecases/) or a product of its
        # own, which keeps the shape in turn: the gateway's three (rest/, webhooks/, console/), billing's KPI report
        # (reports/)
        # and its export of evidence packs (evidence/, kept beside the one key that seals them).
        if len(inside) == 2 and inside[0] not in ("domain", "usecases", "rest", "webhooks", "console", "reports",
                                                 "evidence"):
            strays.append(relative)
        if len(inside) == 2 and inside[0] in ("webhooks", "reports") and path.name not in SHAPE \
                and relative not in EXTRA_MODULES:
            strays.append(relative)
    assert strays == []
