"""Operations routes: ``GET /metrics`` (Prometheus), ``GET /healthz`` and ``GET /readyz``.

None needs a token: a scraper or a load balancer's probe has none, and none of
them tells anything about a person (metrics are labelled by target, scope,
identity kind and rule, never by identity).  ``/healthz`` answers as long as
the process serves HTTP; ``/readyz`` answers 503 while a check fails
(``server.metrics.readiness``: the store, the policy, each target's admin
connection, the archive), with every check's result in the body.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server import metrics
from server.sessions.service import SessionService


def register(app: FastAPI, service: SessionService) -> None:
    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        result = metrics.readiness(service)
        return JSONResponse(result, status_code=200 if result["ok"] else 503)
