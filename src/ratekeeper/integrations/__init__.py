"""Integrations. Server side: ``ratekeeper.integrations.asgi`` (any ASGI framework). Client
side, staying under someone else's limit: ``ratekeeper.integrations.httpx`` (transports),
``.requests`` (a Session adapter), ``.aiohttp`` (a ClientSession middleware). Task queues:
``ratekeeper.integrations.celery`` (one limit for every worker).

Import the submodule you need; this package imports none of them (each client library is an
optional extra).
"""

__all__: list[str] = []
