"""The operator: thin kopf handlers (main.py) over plain functions that decide what to do.

- `settings`: OperatorSettings from the environment.
- `conditions`: kstatus-compatible conditions (Ready, ConnectionVerified, Reconciling, Stalled).
- `connection`: the connection test of an integration or a credential.
- `integration`: CdiIntegration decisions (phase, duplicate tables, the CronJob manifest) and the reconcile.
- `sync_now`: the `cdi.ingest.dev/sync-now` annotation → one Job.
- `credential`: WarehouseCredential reconcile and its `cdi.ingest.dev/in-use` finalizer.
- `history`: status.lastSync → status.runs.
- `leader`: the leader Lease; `admission`: the validating webhook; `observability`: metrics, Events, e-mail.

Its API calls go through cdi_operator.kube.aio.
"""
