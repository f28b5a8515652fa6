"""The operator's settings, from its environment (the Helm chart sets them); a bad value is a clear error."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cdi_operator.api.models import ResourceRequirements
from cdi_operator.controller.resources import ENV_RUNNER_RESOURCES, ResourcesError, parse_default

ENV_RUNNER_IMAGE = "CDI_RUNNER_IMAGE"
ENV_RUNNER_IMAGE_PULL_POLICY = "CDI_RUNNER_IMAGE_PULL_POLICY"
ENV_RUNNER_SERVICE_ACCOUNT = "CDI_RUNNER_SERVICE_ACCOUNT"
ENV_WATCH_NAMESPACES = "CDI_WATCH_NAMESPACES"
ENV_BRAZE_DEFAULT_ENDPOINT = "CDI_BRAZE_DEFAULT_REST_ENDPOINT"
ENV_BRAZE_DEFAULT_SECRET_NAME = "CDI_BRAZE_DEFAULT_API_KEY_SECRET_NAME"
ENV_BRAZE_DEFAULT_SECRET_KEY = "CDI_BRAZE_DEFAULT_API_KEY_SECRET_KEY"
ENV_METRICS_PORT = "CDI_METRICS_PORT"  # /metrics on 0.0.0.0:PORT; 0 turns it off
ENV_CONNECTION_TEST_TIMEOUT = "CDI_CONNECTION_TEST_TIMEOUT_SECONDS"
ENV_CONNECTION_TESTS_AT_ONCE = "CDI_CONNECTION_TESTS_AT_ONCE"
ENV_RESYNC_SECONDS = "CDI_RESYNC_SECONDS"
ENV_RETEST_FAILED_SECONDS = "CDI_RETEST_FAILED_SECONDS"
ENV_LEADER_ELECTION_LEASE = "CDI_LEADER_ELECTION_LEASE"  # NAMESPACE/NAME of a Lease; empty: no election
ENV_WEBHOOK_MODE = "CDI_WEBHOOK_MODE"
ENV_WEBHOOK_ADDR = "CDI_WEBHOOK_ADDR"
ENV_WEBHOOK_HOST = "CDI_WEBHOOK_HOST"
ENV_WEBHOOK_PORT = "CDI_WEBHOOK_PORT"
ENV_WEBHOOK_CERT_DIR = "CDI_WEBHOOK_CERT_DIR"
ENV_WEBHOOK_FAILURE_POLICY = "CDI_WEBHOOK_FAILURE_POLICY"
ENV_MANAGEMENT_API_PORT = "CDI_MANAGEMENT_API_PORT"  # Braze's CDI management API; 0 (default) turns it off
ENV_MANAGEMENT_API_ADDR = "CDI_MANAGEMENT_API_ADDR"
ENV_MANAGEMENT_API_CERT_DIR = "CDI_MANAGEMENT_API_CERT_DIR"  # tls.crt/tls.key: HTTPS; unset: plain HTTP

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_ENDPOINT = re.compile(r"^https?://[^\s/]+(:[0-9]+)?/?$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


WEBHOOK_MODES = ("off", "managed-local", "chart")
WEBHOOK_FAILURE_POLICIES = ("Ignore", "Fail")
WEBHOOK_CERT_FILE, WEBHOOK_KEY_FILE = "tls.crt", "tls.key"


def _require_certificate(variable: str, cert_dir: str, fix: str) -> None:
    for file in (WEBHOOK_CERT_FILE, WEBHOOK_KEY_FILE):
        if not os.path.isfile(os.path.join(cert_dir, file)):
            raise SettingsError(f"${variable} {cert_dir!r} has no {file}; {fix}")


@dataclass(frozen=True)
class WebhookSettings:
    """The validating admission webhook (controller/admission.py).

    mode `off`: none (the status conditions still report a bad spec). `managed-local`: kopf serves it on
    addr:port and keeps the ValidatingWebhookConfiguration `cdi.ingest.dev` pointing at https://host:port itself
    (needs create/patch on admissionregistration.k8s.io); the certificate is self-signed unless cert_dir holds one.
    `chart`: served on addr:port with cert_dir's tls.crt/tls.key (re-read when renewed); the chart owns the
    configuration and the Service. failure_policy Ignore (default): an operator outage never blocks an apply.
    """

    mode: str = "off"
    addr: str = "127.0.0.1"
    host: str | None = None
    port: int = 9443
    cert_dir: str | None = None
    failure_policy: str = "Ignore"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings:
        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        mode = get(ENV_WEBHOOK_MODE) or "off"
        if mode not in WEBHOOK_MODES:
            raise SettingsError(f"${ENV_WEBHOOK_MODE} {mode!r} is not one of {', '.join(WEBHOOK_MODES)}")
        policy = get(ENV_WEBHOOK_FAILURE_POLICY) or "Ignore"
        if policy not in WEBHOOK_FAILURE_POLICIES:
            raise SettingsError(
                f"${ENV_WEBHOOK_FAILURE_POLICY} {policy!r} is not one of {', '.join(WEBHOOK_FAILURE_POLICIES)}"
            )
        raw_port = get(ENV_WEBHOOK_PORT) or "9443"
        if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
            raise SettingsError(f"${ENV_WEBHOOK_PORT} {raw_port!r} is not a TCP port (1 to 65535)")
        addr = get(ENV_WEBHOOK_ADDR) or ("0.0.0.0" if mode == "chart" else "127.0.0.1")
        host = get(ENV_WEBHOOK_HOST)
        for name, value in ((ENV_WEBHOOK_ADDR, addr), (ENV_WEBHOOK_HOST, host)):
            if value is not None and not re.fullmatch(r"[-.:a-zA-Z0-9]{1,253}", value):
                raise SettingsError(f"${name} {value!r} is not a host name or IP address")
        cert_dir = get(ENV_WEBHOOK_CERT_DIR)
        if mode == "chart" and cert_dir is None:
            raise SettingsError(
                f"${ENV_WEBHOOK_MODE} is chart but ${ENV_WEBHOOK_CERT_DIR} is not set; mount the webhook's TLS "
                f"Secret ({WEBHOOK_CERT_FILE}, {WEBHOOK_KEY_FILE}) and point it there"
            )
        if mode != "off" and cert_dir is not None:
            _require_certificate(ENV_WEBHOOK_CERT_DIR, cert_dir, "mount the webhook's TLS Secret there")
        return cls(mode=mode, addr=addr, host=host, port=int(raw_port), cert_dir=cert_dir, failure_policy=policy)


@dataclass(frozen=True)
class ManagementApiSettings:
    """Braze's CDI management API (controller/management_api.py): off unless a port is set."""

    port: int = 0
    addr: str = "0.0.0.0"
    cert_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ManagementApiSettings:
        port = _port(env, ENV_MANAGEMENT_API_PORT, 0)
        addr = env.get(ENV_MANAGEMENT_API_ADDR, "").strip() or "0.0.0.0"
        if not re.fullmatch(r"[-.:a-zA-Z0-9]{1,253}", addr):
            raise SettingsError(f"${ENV_MANAGEMENT_API_ADDR} {addr!r} is not a host name or IP address")
        cert_dir = env.get(ENV_MANAGEMENT_API_CERT_DIR, "").strip() or None
        if port and cert_dir is not None:
            _require_certificate(
                ENV_MANAGEMENT_API_CERT_DIR, cert_dir, "mount the TLS Secret there, or unset it to serve plain HTTP"
            )
        return cls(port=port, addr=addr, cert_dir=cert_dir)


@dataclass(frozen=True)
class OperatorSettings:
    runner_image: str
    runner_service_account: str | None = None  # None: one per integration, made by the operator
    runner_image_pull_policy: str = "IfNotPresent"
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    braze_default_endpoint: str | None = None
    braze_default_secret_name: str | None = None
    braze_default_secret_key: str = "api-key"
    metrics_port: int = 8080
    connection_test_timeout: float = 600.0
    connection_tests_at_once: int = 16
    resync_seconds: float = 60.0
    retest_failed_seconds: float = 600.0
    webhook: WebhookSettings = WebhookSettings()
    leader_lease: tuple[str, str] | None = None  # (namespace, name)
    runner_resources: ResourceRequirements | None = None  # the chart's runner.resources
    management_api: ManagementApiSettings = ManagementApiSettings()

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        image = get(ENV_RUNNER_IMAGE)
        if image is None:
            raise SettingsError(f"${ENV_RUNNER_IMAGE} is not set; set it to the runner image, e.g. cdi-operator:0.1.0")
        if any(c.isspace() for c in image):
            raise SettingsError(f"${ENV_RUNNER_IMAGE} {image!r} holds whitespace; give an image reference")
        account = get(ENV_RUNNER_SERVICE_ACCOUNT)
        if account is not None and not _DNS_SUBDOMAIN.match(account):
            raise SettingsError(f"${ENV_RUNNER_SERVICE_ACCOUNT} {account!r} is not a valid ServiceAccount name")
        policy = get(ENV_RUNNER_IMAGE_PULL_POLICY) or "IfNotPresent"
        if policy not in _PULL_POLICIES:
            raise SettingsError(f"${ENV_RUNNER_IMAGE_PULL_POLICY} {policy!r} is not one of {', '.join(_PULL_POLICIES)}")
        namespaces = tuple(n.strip() for n in (get(ENV_WATCH_NAMESPACES) or "").split(",") if n.strip())
        for namespace in namespaces:
            if not _DNS_LABEL.match(namespace):
                raise SettingsError(
                    f"${ENV_WATCH_NAMESPACES}: {namespace!r} is not a namespace name; give a comma-separated list, "
                    "or leave it empty to watch every namespace"
                )
        endpoint = get(ENV_BRAZE_DEFAULT_ENDPOINT)
        if endpoint is not None and not _ENDPOINT.match(endpoint):
            raise SettingsError(
                f"${ENV_BRAZE_DEFAULT_ENDPOINT} {endpoint!r} is not a REST endpoint URL such as "
                "https://rest.iad-01.braze.com"
            )
        secret_name = get(ENV_BRAZE_DEFAULT_SECRET_NAME)
        if secret_name is not None and not _DNS_SUBDOMAIN.match(secret_name):
            raise SettingsError(f"${ENV_BRAZE_DEFAULT_SECRET_NAME} {secret_name!r} is not a valid Secret name")
        secret_key = get(ENV_BRAZE_DEFAULT_SECRET_KEY) or "api-key"
        if not _SECRET_KEY.match(secret_key):
            raise SettingsError(f"${ENV_BRAZE_DEFAULT_SECRET_KEY} {secret_key!r} is not a valid Secret key")
        lease = get(ENV_LEADER_ELECTION_LEASE)
        lease_parts = tuple(lease.split("/")) if lease else ()
        if lease and (len(lease_parts) != 2 or not all(_DNS_SUBDOMAIN.match(p) for p in lease_parts)):
            raise SettingsError(
                f"${ENV_LEADER_ELECTION_LEASE} {lease!r} is not NAMESPACE/NAME of a Lease, e.g. cdi-system/cdi-operator"
            )
        try:
            runner_resources = parse_default(env.get(ENV_RUNNER_RESOURCES))
        except ResourcesError as exc:
            raise SettingsError(str(exc)) from None
        return cls(
            runner_image=image,
            runner_service_account=account,
            runner_image_pull_policy=policy,
            namespaces=namespaces,
            braze_default_endpoint=endpoint,
            braze_default_secret_name=secret_name,
            braze_default_secret_key=secret_key,
            metrics_port=_port(env, ENV_METRICS_PORT, 8080),
            connection_test_timeout=_seconds(env, ENV_CONNECTION_TEST_TIMEOUT, 600.0, minimum=1.0),
            connection_tests_at_once=_count(env, ENV_CONNECTION_TESTS_AT_ONCE, 16, maximum=1024),
            resync_seconds=_seconds(env, ENV_RESYNC_SECONDS, 60.0, minimum=0.5),
            retest_failed_seconds=_seconds(env, ENV_RETEST_FAILED_SECONDS, 600.0, minimum=1.0),
            webhook=WebhookSettings.from_env(env),
            leader_lease=(lease_parts[0], lease_parts[1]) if lease_parts else None,
            runner_resources=runner_resources,
            management_api=ManagementApiSettings.from_env(env),
        )


def _seconds(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"${name} {raw!r} is not a number of seconds") from None
    if not minimum <= value <= 86400:
        raise SettingsError(f"${name} {raw!r} is out of range; give {minimum:g} to 86400 seconds")
    return value


def _count(env: Mapping[str, str], name: str, default: int, *, maximum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise SettingsError(f"${name} {raw!r} is not a whole number from 1 to {maximum}")
    return int(raw)


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise SettingsError(f"${name} {raw!r} is not a TCP port; give 1 to 65535, or 0 to turn it off")
    return int(raw)
