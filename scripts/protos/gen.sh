#!/usr/bin/env bash
# Generates the Python code of the Haulmesh contracts (protos/haulmesh/**/*.proto) into haulmesh/ at the
# repository root, so modules import as `haulmesh.tender.v1.tender_service_pb2`:
#   *_pb2.py         messages (--python_out)
#   *_pb2.pyi        message type stubs (--pyi_out)
#   *_pb2_grpc.py    service stubs and servicers (--grpc_python_out)
#   *_pb2_grpc.pyi   typed service stubs (mypy-protobuf's protoc-gen-mypy_grpc, --mypy_grpc_out)
#   descriptors.binpb  a FileDescriptorSet of every contract and its imports, with source info (the proto
#                      comments), for tools that need the comments at runtime (e.g. OpenAPI generation);
#                      the generated *_pb2 modules do not carry comments
#   __init__.py      in every generated package directory
# google/api and google/rpc code is not generated: the googleapis-common-protos wheel provides it.
#
# Usage (from the repository root): PYTHON=.venv/bin/python scripts/protos/gen.sh
# Variables: PYTHON (default .venv/bin/python): an interpreter with grpcio-tools, mypy-protobuf and
# googleapis-common-protos installed.
# haulmesh/ is entirely generated (gitignored): it is deleted first, so the result never holds stale
# modules, and the same protos always give the same tree.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
OUT=haulmesh

if [[ ! -f protos/buf.yaml ]]; then
  echo "gen.sh: run from the repository root (no protos/buf.yaml here)" >&2
  exit 2
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "gen.sh: no Python interpreter at PYTHON=$PYTHON (run \`make venv\`, or set PYTHON)" >&2
  exit 1
fi

# google/api/*.proto and google/rpc/*.proto, for imports (build/proto-deps).
PYTHON=$PYTHON bash scripts/protos/deps.sh >/dev/null
DEPS=build/proto-deps

# grpc_tools' own copy of the well-known types (google/protobuf/*.proto), and the directory holding the
# interpreter's console scripts (where mypy-protobuf installs protoc-gen-mypy_grpc).
read -r WKT SCRIPTS < <("$PYTHON" - <<'PY'
import os
import sysconfig

import grpc_tools

print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"), sysconfig.get_path("scripts"))
PY
)
MYPY_GRPC=$SCRIPTS/protoc-gen-mypy_grpc
if [[ ! -x $MYPY_GRPC ]]; then
  MYPY_GRPC=$(command -v protoc-gen-mypy_grpc || true)
fi
if [[ -z $MYPY_GRPC || ! -x $MYPY_GRPC ]]; then
  echo "gen.sh: protoc-gen-mypy_grpc not found (install mypy-protobuf into $PYTHON's environment)" >&2
  exit 1
fi

mapfile -t PROTOS < <(cd protos && find haulmesh -name '*.proto' | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
  echo "gen.sh: no .proto files under protos/haulmesh" >&2
  exit 1
fi

rm -rf "$OUT"
mkdir -p "$OUT"
# Never leave a half-generated tree behind.
trap 'status=$?; if [[ $status -ne 0 ]]; then rm -rf "$OUT"; fi' EXIT

"$PYTHON" -m grpc_tools.protoc \
  --proto_path=protos \
  --proto_path="$DEPS" \
  --proto_path="$WKT" \
  --python_out=. \
  --pyi_out=. \
  --grpc_python_out=. \
  --plugin=protoc-gen-mypy_grpc="$MYPY_GRPC" \
  --mypy_grpc_opt=quiet \
  --mypy_grpc_out=. \
  --include_imports \
  --include_source_info \
  --descriptor_set_out="$OUT/descriptors.binpb" \
  "${PROTOS[@]}"

find "$OUT" -type d -exec touch {}/__init__.py \;
echo "generated $(find "$OUT" -name '*_pb2.py' | wc -l) modules from ${#PROTOS[@]} protos into $OUT/"
