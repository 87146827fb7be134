#!/usr/bin/env bash
# Refreshes the dashboard's third-party files (src/hotsession/dashboard/static/vendor/) from npm.
# Run by a maintainer when upgrading them, never at install time: the files are committed.
set -euo pipefail
MARKED=18.2.1
DOMPURIFY=3.4.18
DEST="$(cd "$(dirname "$0")/.." && pwd)/src/hotsession/dashboard/static/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" >/dev/null
mkdir marked dompurify
tar xzf "marked-$MARKED.tgz" -C marked
tar xzf "dompurify-$DOMPURIFY.tgz" -C dompurify
cp marked/package/lib/marked.esm.js "$DEST/"
cp marked/package/LICENSE "$DEST/marked.LICENSE"
cp dompurify/package/dist/purify.es.mjs "$DEST/"
cp dompurify/package/LICENSE "$DEST/dompurify.LICENSE"
cp dompurify/package/LICENSE-MPL "$DEST/dompurify.LICENSE-MPL"
echo "marked $MARKED and DOMPurify $DOMPURIFY are in $DEST (update the versions in its README.md)"
