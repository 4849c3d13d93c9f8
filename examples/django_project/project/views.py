from django.http import HttpRequest, JsonResponse
from django.views import View

from ratekeeper.integrations.django import route_limit


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "world"})


def item(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"item": pk})


# Per API key (its hash: keys never reach Redis or the logs), else per client address.
@route_limit("5/minute", key="header:X-API-Key")
def search(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"results": []})


@route_limit("2/minute", key="arg:tenant")  # per tenant, whoever asks
class Report(View):
    def get(self, request: HttpRequest, tenant: str) -> JsonResponse:
        return JsonResponse({"tenant": tenant})


def login(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def reset_password(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "up"})
