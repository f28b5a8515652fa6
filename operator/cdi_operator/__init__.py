"""cdi-operator: Braze Cloud Data Ingestion as a Kubernetes operator."""

__version__ = "0.1.0"
