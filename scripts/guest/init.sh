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
exec /bin/heartbeat
