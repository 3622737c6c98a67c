"""What the device agent and the control plane both use of captures, owned by neither: the capture
record and its ``.emc`` format (``record``), and the object stores records are kept in (``store``).

The agent writes records and uploads them; the control plane receives, stores and serves them. Each
side imports this package and the other's wire contracts, never the other's modules.
"""
