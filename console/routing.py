"""Websocket routes (the HTTP ones are in ``console.urls``)."""

from django.urls import path

from console.consumers import LiveConsumer

websocket_urlpatterns = [
    path("ws/live/", LiveConsumer.as_asgi(), name="ws-live"),
]
