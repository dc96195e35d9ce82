#!/usr/bin/env bash
# Fetch the prebuilt OHIF Viewer (npm package @ohif/app, pinned) into viewer-dist/.
# pacs-lite serves it under /viewer with the configuration from ohif-config/.
set -euo pipefail
cd "$(dirname "$0")/.."
OHIF_VERSION="${OHIF_VERSION:-3.13.2}"
target="${1:-viewer-dist}"
if [ -f "$target/.ohif-version" ] && [ "$(cat "$target/.ohif-version")" = "$OHIF_VERSION" ]; then
    echo "OHIF $OHIF_VERSION already in $target"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
tar xzf "$work"/ohif-app-*.tgz -C "$work"
rm -rf "$target"
mv "$work/package/dist" "$target"
echo "$OHIF_VERSION" > "$target/.ohif-version"
echo "OHIF $OHIF_VERSION installed in $target"
