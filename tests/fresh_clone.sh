#!/usr/bin/env bash
# The first-run experience as a new user gets it (tox -e fresh): a fresh clone of this repository, a
# clean virtual environment, the README's first command on one zoo entry (the whole zoo takes hours
# on a CPU), and every line it prints checked against a 100-column terminal.
set -euo pipefail
repository="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repository" "$work/threatbench"
python -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
cd "$work/threatbench"
python -m pip install -q -c .ci/constraints.txt -e .
THREATBENCH_CACHE="$work/cache" COLUMNS=100 threatbench run --entries D --no-progress | tee "$work/run.txt"
threatbench --help > /dev/null
awk 'length > 100 { print "line " NR " is " length " columns wide: " $0; wide = 1 } END { exit wide }' "$work/run.txt"
echo "fresh clone: threatbench run printed $(wc -l < "$work/run.txt") lines, none wider than 100 columns"
