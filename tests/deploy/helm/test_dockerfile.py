"""The Dockerfile of the image the chart runs, checked by parsing it (no container engine is needed).

Its invariants: multi-stage, the runtime stage on python:3.11-slim running as a non-root uid, nothing added
from URLs or archives (no ADD), no secrets or local state copied or baked into the environment, a build
context that only lets the sources in, pins read from pyproject.toml rather than repeated, and /docs' Swagger UI
installed by the same script and lock as ``make docs-ui`` into the place the gateway serves it from.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.gateway.config import DEFAULT_DOCS_UI_DIR
from services.gateway.rest.docs_ui import _BUNDLE_FILES

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SECRETISH = re.compile(r"(\.pem|\.key|\.p12|\.pfx|\.haulmesh|certs|id_rsa|\.env)\b", re.IGNORECASE)


@dataclass
class Instruction:
    keyword: str
    arguments: str
    heredoc: str = ""


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages: continuation lines joined, heredoc bodies attached."""
    lines = text.splitlines()
    args: dict[str, str] = {}
    stages: list[Stage] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        keyword, _, arguments = line.strip().partition(" ")
        heredoc = ""
        marker = re.search(r"<<-?'?(\w+)'?", arguments)
        if marker:
            body = []
            while i < len(lines) and lines[i].strip() != marker.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            heredoc = "\n".join(body) + "\n"
        instruction = Instruction(keyword.upper(), arguments.strip(), heredoc)
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base, name))
        elif not stages and instruction.keyword == "ARG":
            key, _, default = instruction.arguments.partition("=")
            args[key] = default
        elif stages:
            stages[-1].instructions.append(instruction)
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def test_parser_sees_what_a_bad_dockerfile_does() -> None:
    # The checks below must be able to fail: a single-stage root image with an ADD and a baked key.
    _, bad = parse("FROM python:3.11\nADD https://x/y.tgz /app\nCOPY .haulmesh/certs/ca-key.pem /app/\n"
                   "ENV API_TOKEN=abc\nUSER root\n")
    assert len(bad) == 1
    assert [i.keyword for i in bad[0].instructions] == ["ADD", "COPY", "ENV", "USER"]
    assert SECRETISH.search(bad[0].instructions[1].arguments)


def test_multi_stage_with_a_slim_python_runtime(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert stages[0].name == "builder"
    runtime = stages[-1]
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*(@sha256:[0-9a-f]{64})?", runtime.base), runtime.base
    # The runtime stage takes only the build stages' output (the builder's, Swagger UI's), never a compiler, npm or
    # the proto tools.
    build_stages = {stage.name for stage in stages[:-1]}
    copies = [i for i in runtime.instructions if i.keyword == "COPY"]
    assert copies and all(re.match(r"--from=(\S+) ", i.arguments) for i in copies)
    assert {re.match(r"--from=(\S+) ", i.arguments).group(1) for i in copies} <= build_stages
    assert not any("/opt/protoc" in i.arguments for i in copies)
    assert not any(re.search(r"\b(apt-get|pip) install", i.arguments) for i in runtime.instructions)


def test_runs_as_a_non_root_uid(stages: list[Stage]) -> None:
    users = [i.arguments for i in stages[-1].instructions if i.keyword == "USER"]
    assert users, "the runtime stage never drops root"
    user, _, group = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without the image's /etc/passwd.
    assert user.isdigit() and int(user) >= 10000, users[-1]
    assert not group or (group.isdigit() and int(group) != 0)
    last = stages[-1].instructions[-1]
    assert [i.keyword for i in stages[-1].instructions].index("USER") > max(
        n for n, i in enumerate(stages[-1].instructions) if i.keyword in ("RUN", "COPY")), \
        "instructions after USER run as that user: USER must come after the last RUN/COPY"
    assert last.keyword in ("CMD", "ENTRYPOINT", "USER", "EXPOSE")


def test_no_add_no_secrets(stages: list[Stage]) -> None:
    for stage in stages:
        for instruction in stage.instructions:
            assert instruction.keyword != "ADD", "ADD fetches URLs and unpacks archives: use COPY"
            if instruction.keyword == "COPY":
                assert not SECRETISH.search(instruction.arguments), instruction.arguments
            if instruction.keyword in ("ENV", "ARG"):
                assert not re.search(r"(PASSWORD|SECRET|TOKEN|PRIVATE|_KEY)\w*=", instruction.arguments), \
                    instruction.arguments
                assert "REDIS_URL" not in instruction.arguments


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, '!' re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = {path, *(str(Path(*Path(path).parts[:n])) for n in range(1, len(Path(path).parts)))}
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            ignored = not negate
    return ignored


def test_build_context_lets_in_only_the_sources(stages: list[Stage]) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "allow-list: ignore everything, then re-include the sources"
    for path in (".haulmesh/certs/ca-key.pem", "services/tender/dev.pem", "edge_client/truck.key", ".venv/bin/python",
                 "haulmesh/tender/v1/tender_pb2.py", ".git/config", "tests/conftest.py", "build/bench.json",
                 "build/docs-ui/node_modules/swagger-ui-dist/swagger-ui-bundle.js", "scripts/demo.py"):
        assert _ignored(path, patterns), path
    # Everything the build stages copy is in the context.
    for instruction in (i for stage in stages for i in stage.instructions):
        if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from"):
            for source in instruction.arguments.split()[:-1]:
                assert (REPO / source).exists(), source
                assert not _ignored(source.rstrip("/"), patterns), source
                for file in (REPO / source).rglob("*.py") if (REPO / source).is_dir() else []:
                    if "__pycache__" not in file.parts:
                        assert not _ignored(str(file.relative_to(REPO)), patterns), file


def test_pins_come_from_pyproject(stages: list[Stage], tmp_path: Path) -> None:
    # Run the builder's own pin extraction against the real pyproject.toml (paths moved into tmp_path).
    (script,) = [i.heredoc for i in stages[0].instructions if "tomllib" in i.heredoc]
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    subprocess.run([sys.executable, "-c", script.replace("/tmp/", f"{tmp_path}/")], cwd=tmp_path, check=True,
                   timeout=60)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (tmp_path / "runtime.txt").read_text().split() == project["dependencies"]
    generators = (tmp_path / "protoc.txt").read_text().split()
    assert {g.split("==")[0] for g in generators} == {"grpcio-tools", "mypy-protobuf", "googleapis-common-protos"}
    assert all("==" in g for g in generators)


DOCS_UI_SCRIPT = "scripts/docs-ui/install.sh"


def _makefile_recipe(target_prefix: str) -> str:
    """The recipe lines of the Makefile rule whose target starts with ``target_prefix``."""
    lines = (REPO / "Makefile").read_text().splitlines()
    (start,) = [n for n, line in enumerate(lines) if line.startswith(target_prefix) and ":" in line]
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return "\n".join(recipe)


def test_the_image_installs_swagger_ui_as_make_docs_ui_does(stages: list[Stage]) -> None:
    """/docs in the image: the same script and lock as ``make docs-ui``, into where the gateway looks by default
    (else the image's /docs answers 503)."""
    # `make docs-ui` runs the script, and is rebuilt when the script or its pins change.
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^DOCS_UI_SOURCES := .*scripts/docs-ui/package-lock\.json", makefile, re.MULTILINE)
    assert f"bash {DOCS_UI_SCRIPT} build/docs-ui" in _makefile_recipe("$(DOCS_UI)")
    # One stage of the image runs the same script on the same files, nothing else fetched.
    (ui,) = [s for s in stages[:-1] if any(DOCS_UI_SCRIPT in i.arguments for i in s.instructions if i.keyword == "RUN")]
    copies = [i.arguments.split() for i in ui.instructions if i.keyword == "COPY"]
    assert copies == [["scripts/docs-ui/", "scripts/docs-ui/"]], copies
    (run,) = [i.arguments for i in ui.instructions if i.keyword == "RUN"]
    prefix = re.fullmatch(rf"bash {re.escape(DOCS_UI_SCRIPT)} (/\S+)", run).group(1)
    assert re.fullmatch(r"node:\d+[\w.-]*-slim(@sha256:[0-9a-f]{64})?", ui.base), ui.base
    # The runtime stage copies the installed package to the gateway's default directory under /app.
    default = DEFAULT_DOCS_UI_DIR.relative_to(REPO)
    assert [i.arguments for i in stages[-1].instructions if i.keyword == "COPY" and f"--from={ui.name} " in
            i.arguments] == [f"--from={ui.name} {prefix}/node_modules/swagger-ui-dist /app/{default}"]
    assert "HAULMESH_DOCS_UI_DIR" not in " ".join(i.arguments for i in stages[-1].instructions if i.keyword == "ENV")


def test_swagger_ui_is_pinned_by_version_and_hash() -> None:
    script = (REPO / DOCS_UI_SCRIPT).read_text()
    # `npm ci` installs exactly the lock (it refuses a lock that disagrees with package.json); no install scripts.
    assert re.search(r"^npm ci .*--ignore-scripts", script, re.MULTILINE)
    # The build fails, rather than /docs answering 503, when a file the gateway serves is missing.
    (checked,) = re.findall(r"^for file in (.*); do$", script, re.MULTILINE)
    assert set(checked.split()) >= {*_BUNDLE_FILES, "package.json"}
    assert "npm install" not in script.split("set -euo pipefail", 1)[1]
    package = json.loads((REPO / "scripts/docs-ui/package.json").read_text())
    lock = json.loads((REPO / "scripts/docs-ui/package-lock.json").read_text())
    version = package["dependencies"]["swagger-ui-dist"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"an exact version, not a range: {version}"
    assert set(package["dependencies"]) == {"swagger-ui-dist"}
    assert lock["packages"][""]["dependencies"] == package["dependencies"], "package-lock.json is stale"
    assert lock["packages"]["node_modules/swagger-ui-dist"]["version"] == version
    installed = {path: entry for path, entry in lock["packages"].items() if path}
    assert installed and all(entry["integrity"].startswith("sha512-") for entry in installed.values())


def test_generated_code_sits_beside_the_services(stages: list[Stage]) -> None:
    # services/gateway/rest/descriptors.py finds haulmesh/descriptors.binpb three levels above itself.
    destinations = {i.arguments.split()[-1] for i in stages[-1].instructions if i.keyword == "COPY"}
    assert {"/app/services", "/app/haulmesh"} <= destinations
    run = " ".join(i.arguments for i in stages[0].instructions if i.keyword == "RUN")
    assert "scripts/protos/gen.sh" in run  # the same generator as `make protos`
    assert "PYTHONPATH=/app" in " ".join(i.arguments for i in stages[-1].instructions if i.keyword == "ENV")
