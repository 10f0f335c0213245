#!/usr/bin/env bash
# Every test: install what is missing, then unit, whole-model (Hugging Face parity) and command-line tests.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/setup.sh
swift build --build-tests
swift test --skip-build
