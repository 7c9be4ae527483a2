"""The service's own web pages: `/` to try it (ui/index.html with ui/ui.js and ui/ui.css) and `/docs`, the
API description rendered from the served OpenAPI document. Every file is served by the service itself,
so the pages work on an air-gapped cluster, and a strict Content-Security-Policy allows nothing else."""

from __future__ import annotations

import html
from importlib.resources import files

STATIC = {"ui.js": "text/javascript", "ui.css": "text/css"}  # the files /ui/NAME serves; nothing else
# what the pages may load: their own files, and the video and contact sheet as blob URLs made by ui.js
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' blob:; "
       "media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def read(name: str) -> bytes:
    return (files(__package__) / "ui" / name).read_bytes()


def docs_html(document: dict) -> str:
    """The OpenAPI document as one plain page: each operation with its summary, parameters, request body
    fields and responses (Swagger UI would load its code from a CDN)."""
    esc = html.escape
    schemas = document.get("components", {}).get("schemas", {})
    out = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(document['info']['title'])}</title>"
           '<link rel=stylesheet href="/ui/ui.css"></head><body>',
           f"<h1>{esc(document['info']['title'])}</h1><p>{esc(document['info'].get('description') or '')}</p>",
           '<p>The machine-readable description: <a href="/openapi.json">/openapi.json</a>. Try it: <a href="/">/</a>.</p>']
    for path, operations in document.get("paths", {}).items():
        for method, op in operations.items():
            out.append(f"<h2><code>{esc(method.upper())} {esc(path)}</code></h2>"
                       f"<p>{esc(op.get('summary') or '')}. {esc(op.get('description') or '')}</p>")
            params = op.get("parameters", [])
            if params:
                out.append("<h3>Parameters</h3><ul>" + "".join(
                    f"<li><code>{esc(p['name'])}</code> ({esc(p.get('in', ''))}) {esc(p.get('description') or '')}</li>"
                    for p in params) + "</ul>")
            for content_type, content in op.get("requestBody", {}).get("content", {}).items():
                ref = content.get("schema", {}).get("$ref", "")
                schema = schemas.get(ref.rsplit("/", 1)[-1], {})
                out.append(f"<h3>Body ({esc(content_type)})</h3><ul>" + "".join(
                    f"<li><code>{esc(name)}</code> {esc(field.get('description') or '')}</li>"
                    for name, field in schema.get("properties", {}).items()) + "</ul>")
            out.append("<h3>Responses</h3><ul>" + "".join(
                f"<li><code>{esc(status)}</code> {esc(r.get('description') or '')}</li>"
                for status, r in op.get("responses", {}).items()) + "</ul>")
    out.append("</body></html>")
    return "".join(out)
