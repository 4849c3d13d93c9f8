"""Web integrations: ``ratekeeper.integrations.asgi`` (server side, any ASGI framework) and
``ratekeeper.integrations.httpx`` (client side, an httpx transport).

Import the submodule you need; this package imports neither (httpx is an optional extra).
"""

__all__: list[str] = []
