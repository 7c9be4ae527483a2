"""Reading what the workloads write to the store (progress.json, summary.json), with the credentials
of the Secret the resource names: the operator never keeps them beyond the read.

Only s3:// URIs are read, even though the specs were checked already (validation.require_s3_uri): a
path or file:// URI would make the operator read its own filesystem."""

from __future__ import annotations

import asyncio
import dataclasses
import json

from polyvivid.api.common import StorageSpec
from polyvivid.storage import S3Settings, StorageError, open_store

from .kube import ApiError
from .validation import InvalidSpec, require_s3_uri


async def read_json(kube, namespace: str, storage: StorageSpec, uri: str, key: str) -> tuple[dict | None, str]:
    """(document, "") or (None, why not). storage: the spec's, its endpoint resolved
    (children.common.effective_storage)."""
    try:
        require_s3_uri("uri", uri)
    except InvalidSpec as e:
        return None, f"{key} not read: {e}"
    if not storage.endpoint:
        return None, f"{key} not read: no S3 endpoint (the operator's POLYVIVID_S3_ENDPOINT is not set)"
    access = secret = None
    if storage.secret_ref is not None:
        name = storage.secret_ref.name
        try:
            data = await kube.secret_data(namespace, name)
        except ApiError as e:
            if e.status != 403:
                raise
            return None, f"{key} not read: the operator may not read Secret {name!r} (403 Forbidden)"
        if data is None:
            return None, f"Secret {name} not found"
        access, secret = data.get(storage.secret_ref.access_key_key), data.get(storage.secret_ref.secret_key_key)

    def read() -> dict:
        settings = S3Settings.from_env(endpoint=storage.endpoint, access_key=access, secret_key=secret,
                                       region=storage.region)
        if not storage.verify_tls:
            settings = dataclasses.replace(settings, verify_tls=False)
        return json.loads(open_store(uri, settings).read_text(key))

    try:
        return await asyncio.to_thread(read), ""
    except (StorageError, OSError, ValueError) as e:
        return None, f"{key} not readable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
