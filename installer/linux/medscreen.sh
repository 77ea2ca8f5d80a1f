#!/bin/sh
# /usr/bin/medscreen: starts the MedScreen bundle installed in /opt/medscreen.
# A script rather than a symlink so that the install folder can move (MEDSCREEN_PREFIX) and
# so that a broken install says so instead of "No such file or directory".
prefix="${MEDSCREEN_PREFIX:-/opt/medscreen}"
if [ ! -x "$prefix/medscreen" ]; then
  echo "medscreen: the program is missing from $prefix; reinstall the medscreen package" >&2
  exit 127
fi
# The bundle checks the system libraries the window needs and names any that are missing
# (desktop/startup_check.py) before Qt starts.
exec "$prefix/medscreen" "$@"
