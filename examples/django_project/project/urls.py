from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("items/<int:pk>/", views.item, name="item"),
    path("search/", views.search, name="search"),
    path("tenants/<slug:tenant>/report/", views.Report.as_view(), name="report"),
    path("login/", views.login, name="login"),
    path("reset-password/", views.reset_password, name="reset-password"),
    path("health/", views.health, name="health"),
]
