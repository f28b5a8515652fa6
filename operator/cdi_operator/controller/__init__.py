"""The operator: thin kopf handlers (main.py) over plain functions that decide what to do.

- `settings`: OperatorSettings from the environment.
- `conditions`: kstatus-compatible conditions (Ready, ConnectionVerified, Reconciling, Stalled).
- `connection`: the connection test of an integration or a credential.
- `integration`: CdiIntegration decisions (phase, duplicate tables, the CronJob manifest) and the reconcile.
- `sync_now`: the `cdi.ingest.dev/sync-now` annotation → one Job.
- `credential`: WarehouseCredential reconcile and its `cdi.ingest.dev/in-use` finalizer.
- `history`: status.lastSync → status.runs.
- `kubeapi`: the few API calls the operator makes.
"""
