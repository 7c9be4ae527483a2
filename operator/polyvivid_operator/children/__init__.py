"""Child objects built from a resource: plain dicts, no Kubernetes API calls."""
