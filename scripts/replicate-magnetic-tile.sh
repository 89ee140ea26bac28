#!/usr/bin/env bash
# Issue 9's published result, from nothing but the spec and ../shared/datasets/magnetic-tile:
# run examples/magnetic-tile-replication.yaml (resumes if interrupted: finished units are kept),
# then write its report twice into docs/results/magnetic-tile/: on the pilot's hardest class
# (hardestClass: auto) and, from the same results, on Blowhole as the report fixed it.
#
#   bash scripts/replicate-magnetic-tile.sh            # on a CUDA machine (about 6 min on one H200)
#   DEVICE=cpu WORKERS=2 bash scripts/replicate-magnetic-tile.sh   # same spec on a CPU (days)
set -euo pipefail
cd "$(dirname "$0")/.."
SCARCE=${SCARCE:-scarce}
command -v "$SCARCE" >/dev/null || SCARCE=.venv/bin/scarce
SPEC=examples/magnetic-tile-replication.yaml
RESULTS=runs/mt-replication/results/magnetic-tile-replication   # spec.storage.uri + results/NAME
OUT=docs/results/magnetic-tile

# SKIP_RUN=1 only re-renders the reports from the results already in the store.
[ "${SKIP_RUN:-0}" = 1 ] || "$SCARCE" run "$SPEC" --device "${DEVICE:-cuda}" --workers "${WORKERS:-8}"
"$SCARCE" report "$RESULTS" --out "$OUT" --format md > /dev/null
"$SCARCE" report "$RESULTS" --hardest-class magnetic-tile=Blowhole --out "$OUT/blowhole" \
  --format md > /dev/null
# What docs/results publishes: the tables, per-seed values and figures (the HTML and JSON
# copies of the same report stay in the store, under reports/).
rm -f "$OUT"/report.html "$OUT"/report.json "$OUT"/blowhole/report.html "$OUT"/blowhole/report.json
echo "wrote $OUT (hardestClass auto) and $OUT/blowhole"
