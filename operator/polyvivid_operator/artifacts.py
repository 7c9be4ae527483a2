"""Reading what the workloads write to the store (progress.json, summary.json), with the credentials
of the Secret the resource names: the operator never keeps them beyond the read."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from polyvivid.api.common import StorageSpec
from polyvivid.storage import S3Settings, StorageError, open_store


async def read_json(kube, namespace: str, storage: StorageSpec, uri: str, key: str) -> tuple[dict | None, str]:
    """(document, "") or (None, why not)."""
    access = secret = None
    if storage.secret_ref is not None and uri.startswith("s3://"):
        data = await kube.secret_data(namespace, storage.secret_ref.name)
        if data is None:
            return None, f"Secret {storage.secret_ref.name} not found"
        access, secret = data.get(storage.secret_ref.access_key_key), data.get(storage.secret_ref.secret_key_key)

    def read() -> dict:
        settings = None
        if uri.startswith("s3://"):
            settings = S3Settings.from_env(endpoint=storage.endpoint, access_key=access, secret_key=secret,
                                           region=storage.region)
            if not storage.verify_tls:
                settings = dataclasses.replace(settings, verify_tls=False)
        return json.loads(open_store(uri, settings).read_text(key))

    try:
        return await asyncio.to_thread(read), ""
    except (StorageError, OSError, ValueError) as e:
        return None, f"{key} not readable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
