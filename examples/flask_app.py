"""A Flask app limited per endpoint and per client with ratekeeper.

Run it under any WSGI server, e.g. ``waitress-serve --port 8000 flask_app:app`` from this
folder. ``RATEKEEPER_STORAGE=redis://localhost:6379/0`` in the environment keeps the limits
at a Redis or Valkey server, shared by every worker process; the default is in memory.
"""

from __future__ import annotations

import os
from typing import ClassVar

from flask import Flask
from flask.views import MethodView

from ratekeeper.integrations.flask import RateLimiter

app = Flask(__name__)
app.config.update(
    RATEKEEPER_STORAGE=os.environ.get("RATEKEEPER_STORAGE", "memory://"),
    RATEKEEPER_DEFAULT="10/minute",  # each endpoint without its own limit, per client address
    RATEKEEPER_HEADERS="ietf",  # RateLimit and RateLimit-Policy on every response
    RATEKEEPER_EXEMPT=["static", "health"],
)
limiter = RateLimiter(app)


@app.get("/")
def index() -> dict[str, str]:
    return {"hello": "world"}


# Per API key (its hash: keys never reach Redis or the logs), else per client address.
@app.get("/search/")
@limiter.route_limit("5/minute", key="header:X-API-Key")
def search() -> dict[str, list[str]]:
    return {"results": []}


@app.get("/items/<int:item_id>/")
@limiter.route_limit("6/minute", cost=2)  # one limit for the endpoint, any item
def item(item_id: int) -> dict[str, int]:
    return {"item": item_id}


class Report(MethodView):
    decorators: ClassVar = [limiter.route_limit("2/minute", key="arg:tenant")]  # per tenant

    def get(self, tenant: str) -> dict[str, str]:
        return {"tenant": tenant}


app.add_url_rule("/tenants/<tenant>/report/", view_func=Report.as_view("report"))


@app.post("/login/")
@limiter.shared_limit("auth", "3/minute")  # login and reset: one limit per client
def login() -> dict[str, bool]:
    return {"ok": True}


@app.post("/reset-password/")
@limiter.shared_limit("auth", "3/minute")
def reset_password() -> dict[str, bool]:
    return {"ok": True}


@app.get("/health/")
def health() -> dict[str, str]:
    return {"status": "up"}


if __name__ == "__main__":
    from waitress import serve

    serve(app, host="127.0.0.1", port=8000)
