#!/usr/bin/env bash
# Grading runs every submission in a bubblewrap sandbox, and the tests grade submissions:
# install bubblewrap (Debian/Ubuntu package `bubblewrap`) when `bwrap` is missing.
set -euo pipefail
command -v bwrap >/dev/null 2>&1 && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bubblewrap (bwrap) is required and this is not a Debian/Ubuntu system:" >&2
    echo "install it with your package manager (Fedora: dnf install bubblewrap; Arch: pacman -S bubblewrap)." >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing bubblewrap (apt-get install bubblewrap) ..." >&2
$sudo apt-get install -y -qq bubblewrap >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq bubblewrap >/dev/null
}
command -v bwrap >/dev/null 2>&1
