#!/usr/bin/env bash
# Builds NovaCron's test guest from Debian packages: the linux-image-amd64 kernel and a
# busybox-static initramfs running scripts/guest/heartbeat.c. Output (cached by the
# hash of the inputs): $NOVACRON_GUEST_DIR (default ~/.cache/novacron/guest)/{vmlinuz,initrd.img}
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${NOVACRON_GUEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/novacron/guest}
key=$(cat "$here/build-test-guest.sh" "$here/guest/heartbeat.c" "$here/guest/init.sh" | sha256sum | cut -c1-16)
if [ -f "$out/$key.done" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then echo "$out"; exit 0; fi

sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
need=()
command -v cpio >/dev/null || need+=(cpio)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null; }
fi

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
if [ -z "$kpkg" ]; then $sudo apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1); fi
[ -n "$kpkg" ] || { echo "build-test-guest: cannot resolve linux-image-amd64" >&2; exit 1; }
apt-get download -qq "$kpkg" busybox-static >/dev/null
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb bb

mkdir -p root/bin root/proc root/sys root/dev root/etc root/tmp root/lib/modules
cp bb/bin/busybox root/bin/busybox
# The ACPI power button and evdev are modules in Debian's kernel; acpid needs both to
# turn the host's ACPI shutdown request into a power-off.
# virtio-blk (and the virtio PCI transport under it) for disk tests, virtio-net (and the
# failover modules it needs) for network tests, AHCI + sr + isofs for the cloud-init CD-ROM, loaded in
# dependency order by init.
for m in drivers/acpi/button.ko drivers/input/evdev.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko \
  drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko \
  net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko \
  drivers/scsi/scsi_common.ko drivers/scsi/scsi_mod.ko drivers/ata/libata.ko drivers/ata/libahci.ko drivers/ata/ahci.ko \
  drivers/cdrom/cdrom.ko drivers/scsi/sr_mod.ko fs/isofs/isofs.ko; do
  f=$(find kernel/lib/modules -path "*/$m*" | head -1)
  [ -n "$f" ] || { echo "build-test-guest: kernel module $m not found" >&2; exit 1; }
  case "$f" in *.xz) xz -dc "$f" ;; *.zst) zstd -dcq "$f" ;; *) cat "$f" ;; esac > "root/lib/modules/$(basename "$m")"
done
gcc -static -O2 -Wall -o root/bin/heartbeat "$here/guest/heartbeat.c"
cp "$here/guest/init.sh" root/init
chmod +x root/init root/bin/busybox root/bin/heartbeat
(cd root && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img

mkdir -p "$out"
cp kernel/boot/vmlinuz-* "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
cp initrd.img "$out/initrd.img.tmp" && mv "$out/initrd.img.tmp" "$out/initrd.img"
rm -f "$out"/*.done; touch "$out/$key.done"
echo "$out"
