"""Serving PolyVivid over HTTP with Ray Serve: what a PolyVividService runs.

schema.py   the HTTP request and response bodies, and the checks against a service's limits (no torch)
jobs.py     job records and results in the artifact store (jobs/ID/...), shared by every replica
app.py      the Ray Serve application: a FastAPI ingress and a generator holding the model
local.py    `polyvivid serve --local`: local Ray + Serve on 127.0.0.1
client.py   `polyvivid request`: submit, poll, download (what the demo and users call)
"""
