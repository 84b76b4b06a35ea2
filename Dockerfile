# syntax=docker/dockerfile:1
# The one image every Haulmesh service runs (the Helm chart starts it as `python -m services.<name>`).
# Build from the repository root:  docker build -t haulmesh:0.1.0 .
# Multi-stage: the builder generates the contracts' code (scripts/protos/gen.sh, the same script as
# `make protos`) and installs the pinned dependencies into a virtualenv; the runtime stage gets that virtualenv
# and the source tree only: no compilers, no proto tools, no secrets (certificates and REDIS_URL come from
# Kubernetes Secrets at run time), owned by root and run as an unprivileged user. The docs-ui stage installs the
# /docs page's Swagger UI with `make docs-ui`'s own script and lock, so /docs works in the image, offline; the
# console-assets stage likewise installs the /console page's files with `make console-assets`' script and lock.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first (their layer survives source changes). Every pin is read from pyproject.toml, so the
# image cannot drift from what the tests ran with: the runtime dependencies into /opt/venv, the code
# generators (grpcio-tools, mypy-protobuf from the dev extra) into a throw-away /opt/protoc.
COPY pyproject.toml ./
RUN python - <<'PY'
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
runtime = project["dependencies"]
generators = [d for d in project["optional-dependencies"]["dev"] if d.startswith(("grpcio-tools==", "mypy-protobuf=="))]
googleapis = [d for d in runtime if d.startswith("googleapis-common-protos==")]
open("/tmp/runtime.txt", "w").write("\n".join(runtime) + "\n")
open("/tmp/protoc.txt", "w").write("\n".join(generators + googleapis) + "\n")
PY
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r /tmp/runtime.txt \
 && python -m venv /opt/protoc && /opt/protoc/bin/pip install -r /tmp/protoc.txt
COPY protos/ protos/
COPY scripts/protos/ scripts/protos/
RUN PYTHON=/opt/protoc/bin/python bash scripts/protos/gen.sh
COPY services/ services/
COPY edge_client/ edge_client/
# Byte-compile our code now (pip already did the dependencies): the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q services edge_client haulmesh

# Swagger UI for /docs (services/gateway/rest/docs_ui.py): scripts/docs-ui/install.sh, the script `make docs-ui`
# runs, `npm ci` against the committed package-lock.json (pinned version, integrity hashes, no install scripts).
# npm and the registry are needed here only: the runtime stage gets the installed files.
FROM ${NODE_IMAGE} AS docs-ui
WORKDIR /src
COPY scripts/docs-ui/ scripts/docs-ui/
RUN bash scripts/docs-ui/install.sh /opt/docs-ui

# The operations console's files for /console/ (MapLibre GL JS, Chart.js, axe-core, the US states base map built
# from us-atlas): scripts/console/install.sh, the script `make console-assets` runs, `npm ci` against the committed
# package-lock.json (pinned versions, integrity hashes, no install scripts). The runtime stage gets only the files
# the gateway serves, not node_modules.
FROM ${NODE_IMAGE} AS console-assets
WORKDIR /src
COPY scripts/console/ scripts/console/
RUN bash scripts/console/install.sh /opt/console

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="haulmesh" \
      org.opencontainers.image.description="Haulmesh services: tender, mission, telemetry, billing, gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HAULMESH_LISTEN_HOST=0.0.0.0 \
    HAULMESH_STATE_DIR=/var/lib/haulmesh
RUN groupadd --system --gid 10001 haulmesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin haulmesh \
 && mkdir -p /var/lib/haulmesh && chown 10001:10001 /var/lib/haulmesh
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /src/services /app/services
COPY --from=builder /src/edge_client /app/edge_client
COPY --from=builder /src/haulmesh /app/haulmesh
# Where the gateway looks by default (HAULMESH_DOCS_UI_DIR's default: build/docs-ui/... of the source tree, /app).
COPY --from=docs-ui /opt/docs-ui/node_modules/swagger-ui-dist /app/build/docs-ui/node_modules/swagger-ui-dist
# The same for /console/ (build/console/... of the source tree): the files scripts/console/install.sh checks, where
# it installs them.
COPY --from=console-assets /opt/console/node_modules/maplibre-gl/dist/maplibre-gl.mjs \
     /opt/console/node_modules/maplibre-gl/dist/maplibre-gl-worker.mjs \
     /opt/console/node_modules/maplibre-gl/dist/maplibre-gl.css /app/build/console/node_modules/maplibre-gl/dist/
COPY --from=console-assets /opt/console/node_modules/chart.js/dist/chart.umd.min.js /app/build/console/node_modules/chart.js/dist/
COPY --from=console-assets /opt/console/node_modules/axe-core/axe.min.js /app/build/console/node_modules/axe-core/
COPY --from=console-assets /opt/console/basemap/us-states.geojson /app/build/console/basemap/
WORKDIR /app
# The only writable place the services need (local state); Kubernetes mounts an emptyDir here.
VOLUME ["/var/lib/haulmesh"]
USER 10001:10001
EXPOSE 50051 50052 50053 50054 50055 8080 8443 9464 9465
CMD ["python", "-m", "services.gateway"]
