#!/usr/bin/env bash
# Regenerates the committed Swift code of Protocols/*.proto into Sources/Wire/Generated.
# protoc comes from Debian (protobuf-compiler; libprotobuf-dev for the well-known types placement.proto imports);
# protoc-gen-swift is built once from the swift-protobuf version Package.swift uses, into .build-protoc-gen-swift
# (never as a build plugin, which would compile protoc every build).
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.39.0
plugin=${PROTOC_GEN_SWIFT:-$(command -v protoc-gen-swift || true)}
if [ -z "$plugin" ]; then
    dir=.build-protoc-gen-swift
    if [ ! -x "$dir/.build/release/protoc-gen-swift" ]; then
        rm -rf "$dir"
        git clone -q --depth 1 --branch "$version" https://github.com/apple/swift-protobuf "$dir"
        (cd "$dir" && swift build -c release --product protoc-gen-swift)
    fi
    plugin="$PWD/$dir/.build/release/protoc-gen-swift"
fi
mkdir -p Sources/Wire/Generated
protoc --plugin=protoc-gen-swift="$plugin" --swift_opt=Visibility=Public --swift_out=Sources/Wire/Generated \
    -I Protocols Protocols/*.proto
echo "generated: $(ls Sources/Wire/Generated)"
