#!/usr/bin/env bash
# Installs QEMU for NovaCron's real-VM tests: QEMU 10 from Debian's bookworm-backports
# (Debian 12's QEMU 7.2 corrupts TCG guests during migration), plus qemu-utils.
# The backports suite is derived from this machine's existing apt sources (same mirror,
# same keyring); no mirror is hard-coded. Idempotent; needs root (or sudo).
set -euo pipefail

want_major=${NOVACRON_QEMU_MAJOR:-10}
have_major() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
  local v; v=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
  [ "${v:-0}" -ge "$want_major" ] && command -v qemu-img >/dev/null 2>&1
}
have_major && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
. /etc/os-release
codename=${VERSION_CODENAME:?cannot tell the Debian release}
list=/etc/apt/sources.list.d/novacron-backports.sources

if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # deb822 sources: reuse the URIs and Signed-By of the stanza carrying the release suite.
  stanza=$(awk -v rel="$codename" '
    BEGIN { RS=""; FS="\n" }
    { uris=""; signed=""; suites=""; types="";
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^URIs:/) uris = substr($i, 7)
        else if ($i ~ /^Signed-By:/) signed = substr($i, 12)
        else if ($i ~ /^Suites:/) suites = " " substr($i, 8) " "
        else if ($i ~ /^Types:/) types = $i
      }
      if (suites ~ (" " rel " ") && types ~ /deb( |$)/ && uris != "") { print uris "|" signed; exit }
    }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -n "$stanza" ]; then
    uris=${stanza%%|*}; signed=${stanza#*|}
    { echo "Types: deb"; echo "URIs: $uris"; echo "Suites: ${codename}-backports"; echo "Components: main";
      [ -n "$signed" ] && echo "Signed-By: $signed"; } | $sudo tee "$list" >/dev/null
  else
    # One-line sources.list format.
    uri=$(awk -v rel="$codename" '$1 == "deb" && $0 ~ (" " rel " ") { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || { echo "setup-qemu: cannot find the Debian mirror in apt's sources" >&2; exit 1; }
    echo "deb $uri ${codename}-backports main" | $sudo tee /etc/apt/sources.list.d/novacron-backports.list >/dev/null
  fi
  echo "setup-qemu: enabled ${codename}-backports from the existing apt sources" >&2
fi

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends -t "${codename}-backports" qemu-system-x86 qemu-utils >/dev/null
have_major || { echo "setup-qemu: qemu ${want_major}+ not available after install ($(qemu-system-x86_64 --version | head -1))" >&2; exit 1; }
qemu-system-x86_64 --version | head -1 >&2
