"""ASGI entry point: HTTP through Django, websockets (live updates) through Channels.

Websockets authenticate by the Django session cookie (``AuthMiddlewareStack``)
and must come from a page of an allowed host (``AllowedHostsOriginValidator``
checks the Origin header against ``ALLOWED_HOSTS``), so another site cannot
open a socket with a logged-in user's cookie.
"""

import os

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
# Django must be set up before the consumers (and the models they use) are imported.
django_asgi_app = get_asgi_application()

from console.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
