#!/bin/busybox sh
# PID 1 of NovaCron's test guest: mount the basics, power off on the ACPI button,
# and run the heartbeat workload on the serial console.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "NOVACRON-GUEST up"
# ACPI power button → clean power-off (what an ACPI shutdown from the host expects).
if [ -d /sys/firmware/acpi ]; then
  insmod /lib/modules/evdev.ko 2>/dev/null
  insmod /lib/modules/button.ko 2>/dev/null
  mkdir -p /etc/acpi/PWRF /etc/acpi/button
  printf '#!/bin/sh\necho "NOVACRON-GUEST poweroff" > /dev/console\npoweroff -f\n' > /etc/acpi/PWRF/00000080
  cp /etc/acpi/PWRF/00000080 /etc/acpi/button/power
  chmod +x /etc/acpi/PWRF/00000080 /etc/acpi/button/power
  acpid -d -c /etc/acpi >/dev/null 2>&1 &
fi
# nc.disk=1: write numbered 512-byte records to /dev/vda, one block each, and report a
# record only once it is fsynced ("DISK n"): a host test can then check that every
# reported record is in the disk image, wherever the VM ended up running.
case " $(cat /proc/cmdline) " in
  *" nc.disk=1 "*)
    for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do insmod /lib/modules/$m.ko; done
    (
      i=1
      while [ ! -b /dev/vda ]; do sleep 0.1; done
      while :; do
        printf 'NCREC %08d\n' "$i" | dd of=/dev/vda bs=512 seek="$i" conv=notrunc,fsync 2>/dev/null && echo "DISK $i"
        i=$((i + 1))
        [ "$i" -gt 60000 ] && i=1
        sleep 0.05
      done
    ) &
    ;;
esac
# nc.diskrate=N (heartbeat writes /dev/vda at N MB/s): the virtio-blk driver.
case " $(cat /proc/cmdline) " in
  *" nc.diskrate="*) for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do insmod /lib/modules/$m.ko 2>/dev/null; done ;;
esac
# nc.cidata=1: find the cloud-init NoCloud seed (a CD-ROM on the AHCI controller holding
# meta-data; busybox's blkid cannot read ISO labels, so the host test checks the label)
# and print what a cloud image would take from it ("CIDATA ...").
case " $(cat /proc/cmdline) " in
  *" nc.cidata=1 "*)
    for m in scsi_common scsi_mod libata libahci ahci cdrom sr_mod isofs; do insmod /lib/modules/$m.ko 2>/dev/null; done
    mkdir -p /cidata
    found=""
    why="no CD-ROM"
    for try in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
      for dev in /dev/sr0 /dev/sr1; do
        [ -b "$dev" ] || continue
        why=$(mount -t iso9660 -o ro "$dev" /cidata 2>&1) || continue
        if [ -f /cidata/meta-data ]; then found=$dev; break; fi
        why="$dev has no meta-data"
        umount /cidata
      done
      [ -n "$found" ] && break
      sleep 0.25
    done
    if [ -n "$found" ]; then
      # meta-data is YAML; NovaCron writes its values as double-quoted scalars.
      iid=$(sed -n 's/^instance-id: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /cidata/meta-data | head -1)
      host=$(sed -n 's/^local-hostname: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /cidata/meta-data | head -1)
      keys=$(grep -c '^ *- ' /cidata/meta-data)
      echo "CIDATA instance-id=$iid hostname=$host keys=$keys userdata=$(head -1 /cidata/user-data) network=$([ -f /cidata/network-config ] && echo yes || echo no)"
      [ -n "$host" ] && hostname "$host"
    else
      echo "CIDATA none ($why)"
    fi
    ;;
esac
# nc.api=PORT: bring up the virtio NIC with a DHCP lease from QEMU's user-mode network
# ("NCNET lease <ip>" proves the NIC works), then try to drive the host's NovaCron API
# through the user-mode gateway 10.0.2.2 once, and report what came back ("NCAPI ...").
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    nc.api=*)
      port=${arg#nc.api=}
      for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do insmod /lib/modules/$m.ko 2>/dev/null; done
      printf '#!/bin/sh\n[ "$1" = bound ] && ip addr add "$ip/24" dev "$interface" && echo "NCNET lease $ip" > /dev/console\nexit 0\n' > /etc/udhcpc.sh
      chmod +x /etc/udhcpc.sh
      ip link set lo up
      ip link set eth0 up
      udhcpc -i eth0 -n -q -t 10 -T 1 -s /etc/udhcpc.sh >/dev/null 2>&1 || echo "NCNET no lease"
      # (busybox 1.35's wget crashes when -T meets a long option: bound it with timeout instead)
      out=$(timeout 15 wget -q -O - --header 'Content-Type: application/json' \
        --post-data '{"name":"made-by-guest","vcpus":1,"memoryMiB":64,"disks":[{"name":"r","sizeMiB":1}]}' \
        "http://10.0.2.2:$port/v1/vms" 2>&1)
      echo "NCAPI rc=$? $(echo "$out" | tr '\n' ' ')"
      ;;
  esac
done
exec /bin/heartbeat
