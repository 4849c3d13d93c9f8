"""A minimal Django project limited per URL pattern and per client with ratekeeper.

``RATEKEEPER_STORAGE=redis://localhost:6379/0`` in the environment keeps the limits at a
Redis or Valkey server, shared by every worker process; the default is in memory.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "project.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "ratekeeper.integrations.django.RateLimitMiddleware",
]

RATEKEEPER = {
    "STORAGE": os.environ.get("RATEKEEPER_STORAGE", "memory://"),
    "DEFAULT": "10/minute",  # each view without its own limit, per client address
    "HEADERS": "ietf",  # RateLimit and RateLimit-Policy on every response
    "ROUTES": {
        "items/<int:pk>/": {"rate": "6/minute", "cost": 2},  # one limit for every item
        "login": {"rate": "3/minute", "name": "auth"},  # by URL name; shared with...
        "reset-password/": {"rate": "3/minute", "name": "auth"},  # ...this route
    },
    "EXEMPT": ["health"],
}
