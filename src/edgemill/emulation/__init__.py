"""Emulated devices of another architecture on the build machine (qemu-user through binfmt_misc, a Debian
root file system per platform): where an Arm compile's accuracy gate runs its candidates, and where the
tests install the offline bundle and run the agent. See docs/devices.md."""
