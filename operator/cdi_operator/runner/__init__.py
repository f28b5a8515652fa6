"""The sync runner: read -> validate -> batch -> send -> checkpoint."""
