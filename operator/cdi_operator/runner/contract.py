"""The runner's contract with the operator: how the operator's CronJobs start `cdi sync --in-cluster` (its flags)
and the environment they give it. `controller/integration.py` builds the CronJob from these names and the commands
read them; DESIGN.md fixes the public ones."""

from __future__ import annotations

from typing import Final

ENV_BRAZE_ENDPOINT: Final = "CDI_BRAZE_REST_ENDPOINT"
ENV_BRAZE_API_KEY: Final = "CDI_BRAZE_API_KEY"
ENV_JOB_NAME: Final = "CDI_JOB_NAME"  # the run's `job`, from the pod label `job-name` by the downward API
ENV_POD_NAME: Final = "CDI_POD_NAME"  # the run's `pod`, from the pod's name by the downward API

SYNC_COMMAND: Final = "sync"
FLAG_IN_CLUSTER: Final = "--in-cluster"
FLAG_INTEGRATION: Final = "--integration"
FLAG_TRIGGER: Final = "--trigger"
TRIGGER_SCHEDULE: Final = "schedule"
TRIGGER_SYNC_NOW: Final = "syncNow"
TRIGGERS: Final = (TRIGGER_SCHEDULE, TRIGGER_SYNC_NOW)


def runner_args(namespace: str, name: str, trigger: str = TRIGGER_SCHEDULE) -> list[str]:
    """The runner container's args (the image's entrypoint is `cdi`) for one sync of `namespace/name`."""
    return [SYNC_COMMAND, FLAG_IN_CLUSTER, FLAG_INTEGRATION, f"{namespace}/{name}", FLAG_TRIGGER, trigger]
