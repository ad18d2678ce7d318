#!/usr/bin/env bash
# Says which `lightning` command is active. lightning-sdk installs a `lightning` script of its own; whichever
# package was installed last owns $VENV/bin/lightning. `lang3d` is always the project's command.
#   scripts/check_lightning_command.sh VENV     exit 0: the environment's `lightning` is lang3d's; 1: it is not
set -uo pipefail
VENV=${1:-.venv}
BIN="$(cd "$VENV/bin" 2>/dev/null && pwd)" || { echo "check_lightning_command: no $VENV/bin" >&2; exit 2; }
status=0
if grep -q "lang3d.training.cli" "$BIN/lightning" 2>/dev/null; then
  echo "lightning command: $BIN/lightning is lang3d's (lang3d.training.cli)"
else
  owner=$(grep -m1 -oE "from [A-Za-z0-9_.]+ import" "$BIN/lightning" 2>/dev/null | awk '{print $2}')
  echo "lightning command: WARNING: $BIN/lightning is not lang3d's (it runs ${owner:-something else}; lightning-sdk" \
       "installs one of the same name). Use $BIN/lang3d, which always works, or reinstall lang3d last." >&2
  status=1
fi
active=$(command -v lightning || true)
if [ -n "$active" ] && [ "$active" != "$BIN/lightning" ]; then
  echo "lightning command: note: 'lightning' on your PATH is $active, not $BIN/lightning; activate $VENV or use $BIN/lang3d"
fi
exit $status
