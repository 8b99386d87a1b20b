#!/usr/bin/env bash
# The system packages the tests need, installed when missing (Debian/Ubuntu):
#   bubblewrap  every submission is graded in a bubblewrap sandbox, and the tests grade submissions;
#   chromium    the instructor's report is checked in headless Chromium.
set -euo pipefail
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]}, and this is not a Debian/Ubuntu system:" >&2
    echo "install them with your package manager (Fedora: dnf install ${missing[*]})." >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${missing[*]} (apt-get install) ..." >&2
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
command -v bwrap >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1
