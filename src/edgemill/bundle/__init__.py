"""``edgemill agent bundle``: the offline installer of the device agent. It runs on the build machine,
never on a device (the device only runs the ``install.sh`` it writes), so it lives apart from the agent:
:mod:`.build` assembles the tar from :mod:`.wheel` (edgemill's own wheel), :mod:`.pip` (the device's
wheels, downloaded for its platform), :mod:`.resolve` (the requirement closure re-checked with the
device's markers), :mod:`.target` (what a device platform is) and :mod:`.files` (the scripts and
service files inside)."""
