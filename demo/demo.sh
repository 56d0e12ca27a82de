#!/usr/bin/env bash
# make demo: runs after `make apt tools build`, as root, from anywhere.
# The demo itself is a Go program (demo/cmd); see its package comment.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./demo/cmd "$@"
