#!/usr/bin/env bash
# Installs the Debian packages NovaCron's build needs when they are missing.
# Idempotent and quiet when everything is already there. Needs root (or sudo) only
# when something must be installed.
#   libclang-dev      bindgen (librocksdb-sys) loads libclang at build time
#   protobuf-compiler raft-rs message code generation
#   build-essential   C/C++ toolchain for the bundled RocksDB build
#   genisoimage       builds cloud-init NoCloud seed ISOs (a VM's cloudInit)
#   iproute2          ip: the tests' network namespaces (a second host on a network they can break)
set -euo pipefail

missing=()
# (libclang-cpp*.so, pulled in by other packages, is not what bindgen loads.)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || ls /usr/lib/*-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v g++ >/dev/null 2>&1 || missing+=(build-essential)
command -v genisoimage >/dev/null 2>&1 || missing+=(genisoimage)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done

[ ${#missing[@]} -eq 0 ] && exit 0

echo "novacron: installing system packages: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "novacron: need root to install ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
