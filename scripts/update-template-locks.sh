#!/usr/bin/env bash
# Rewrites host/templates/*/Cargo.lock.tmpl: the lock file `glia new` writes
# into a new function crate, so that it builds with the versions the
# built-in functions use (functions/Cargo.lock), offline from a cargo cache
# that built glia. Run it after changing the SDK's dependencies or a
# template's Cargo.toml.tmpl; the test suite builds each template with
# --locked and fails while a lock is stale.
#
# Usage: scripts/update-template-locks.sh

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
NAME=glia-template-lock

for dir in "$ROOT"/host/templates/*/; do
  template=$(basename "$dir")
  crate="$WORK/$template"
  mkdir -p "$crate/src"
  sed -e "s|{{name}}|$NAME|g" -e "s|{{sdk}}|$ROOT/sdk|g" "$dir/Cargo.toml.tmpl" > "$crate/Cargo.toml"
  cp "$dir/src/lib.rs" "$crate/src/lib.rs"
  # Start from the built-in functions' versions; cargo keeps those that
  # apply, drops the others and adds what is missing.
  cp "$ROOT/functions/Cargo.lock" "$crate/Cargo.lock"
  cargo metadata --manifest-path "$crate/Cargo.toml" --format-version 1 >/dev/null
  sed -e "s|\"$NAME\"|\"{{name}}\"|g" "$crate/Cargo.lock" > "$dir/Cargo.lock.tmpl"
  echo "$template: $(grep -c '^\[\[package\]\]' "$dir/Cargo.lock.tmpl") packages"
done
