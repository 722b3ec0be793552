"""kangaroo-serve: an OpenAI-compatible HTTP server over engine directories.

* ``worker.py``: one engine; the only code here that calls into the runner (``KangarooEngine``).
* ``pool.py``: N workers, a bounded queue (full: 429 at once), leases that give an engine back exactly once.
* ``schemas.py``: the request bodies, validated (unknown fields ignored, invalid ones a 400).
* ``openai_format.py``: response bodies, stream chunks and error bodies in OpenAI's shapes.
* ``generation.py``: one request's run on a leased engine (pieces, result, time to first token, metrics).
* ``metrics.py``: Prometheus metrics (prometheus_client).
* ``middleware.py``: the request body limit (413) and the count of answered requests.
* ``app.py``: the FastAPI application and its routes.
* ``server.py``: uvicorn on a bound socket (graceful shutdown), in the foreground or a background thread.
* ``load.py``: the bounded loopback load run (kangaroo-serve-load).
"""
