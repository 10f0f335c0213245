#!/usr/bin/env bash
# The main job: install what is missing, build in release mode, and generate tokens with the built-in
# synthetic `medium` model (Mixtral-shaped, 354 M parameters, made in memory: no download).
# Extra arguments go to `moe generate`, e.g. Scripts/run.sh --max-new-tokens 128 --temperature 0.8
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/setup.sh
swift build -c release --product moe
.build/release/moe generate --preset medium --prompt-ids 1,415,2936,9060,285,1142 --max-new-tokens 64 --temperature 0 "$@"
