"""The fleet control plane (`edgemill server`): registry with lineage, fleets and devices, staged
rollouts, alerts and a dashboard, over one database and one object store.

Layout: ``app`` wires ``routers/`` (thin HTTP translators) over ``db/`` (tables, migrations) and the
pure cores ``rollout`` (wave decisions) and ``alerts`` (rule evaluation); ``reconciler`` runs them on a
tick; ``dashboard/`` is the web UI. It never imports the compiler or the runtime.
"""
