"""Andon's one settings module: every value comes from a typed environment variable.

Every variable read here is documented in README.md.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
import plotly

from console.env import env_bool, env_int, env_list, env_str, local_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("ANDON_DEBUG", False)

# No secret lives in the code: without ANDON_SECRET_KEY a random key is made once and kept in
# a file beside the project (0600), shared by every process of this checkout. Several machines
# must set ANDON_SECRET_KEY to one value.
SECRET_KEY = env_str("ANDON_SECRET_KEY", "") or local_secret_key(BASE_DIR / ".andon-secret-key")

ALLOWED_HOSTS = env_list("ANDON_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("ANDON_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "console",
    "integrations",
    "monitors",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"
ASGI_APPLICATION = "console.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "console.pages.common.principal_context",
            ],
        },
    },
]

# --- Database: SQLite file by default, PostgreSQL (psycopg 3) from DATABASE_URL.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'andon.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: optional. With it, Celery, channels-redis and shared metrics use it.
REDIS_URL = env_str("REDIS_URL", "")

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
# A request that queues work must not hang while Redis is down: the outbox keeps the work and
# the sweep queues it again, so publishing fails fast instead of retrying for seconds.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "max_retries": 0,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
    "socket_connect_timeout": 2,
}

ANDON_EVALUATE_EVERY_S = env_int("ANDON_EVALUATE_EVERY_S", 15, minimum=1)

# --- Ingest limits.
ANDON_MAX_BODY_BYTES = env_int("ANDON_MAX_BODY_BYTES", 20 * 1024 * 1024, minimum=1024)
ANDON_MAX_BATCH_ITEMS = env_int("ANDON_MAX_BATCH_ITEMS", 10_000, minimum=1)
ANDON_BUSINESS_KEY_ATTRIBUTES = env_list(
    "ANDON_BUSINESS_KEY_ATTRIBUTES", ["workorder.id", "lot.id", "asset.id", "shipment.id"]
)
# Correlation does not follow a key that ties more items than this (a plant code, a date).
ANDON_CORRELATION_HUB_LIMIT = env_int("ANDON_CORRELATION_HUB_LIMIT", 500, minimum=1)
# Django's own cap must sit above ours so that ingest views answer 413 themselves.
DATA_UPLOAD_MAX_MEMORY_SIZE = ANDON_MAX_BODY_BYTES + 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 10_000

# --- Auth and sessions.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("ANDON_SECURE_COOKIES", False):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "console.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Andon API",
    "DESCRIPTION": "Ingest, correlation, alerting and replay for manufacturing integrations.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The document is public (like the contract it describes): no token, no 401 on a stale one.
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # The ingest and health endpoints are plain Django views spectacular cannot see.
        "console.schema.add_plain_views",
    ],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
# Plotly's JS is served from the installed plotly package: no CDN, nothing vendored twice.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("plotly", Path(plotly.__file__).resolve().parent / "package_data"),
]
STATIC_ROOT = BASE_DIR / ".staticfiles"
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("ANDON_LOG_LEVEL", "WARNING")},
}

# Concurrent ingest requests one process serves before it sheds load with 503 + Retry-After.
ANDON_MAX_CONCURRENT_INGEST = env_int("ANDON_MAX_CONCURRENT_INGEST", 16, minimum=1)

# Messages (e.g. a token shown once after creation in the admin) stay server-side.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# --- Replay (integrations.replay): approval size, batch per claim, parallel shards, task lease.
ANDON_REPLAY_APPROVAL_ABOVE = env_int("ANDON_REPLAY_APPROVAL_ABOVE", 100, minimum=1)
ANDON_REPLAY_BATCH = env_int("ANDON_REPLAY_BATCH", 100, minimum=1)
ANDON_REPLAY_PARALLELISM = env_int("ANDON_REPLAY_PARALLELISM", 2, minimum=1)
ANDON_REPLAY_LEASE_S = env_int("ANDON_REPLAY_LEASE_S", 60, minimum=2)

# --- Notifications (monitors.notify): email through SMTP when ANDON_EMAIL_HOST is set, else
# printed to the console; links in notifications start with ANDON_PUBLIC_URL.
ANDON_EMAIL_HOST = env_str("ANDON_EMAIL_HOST", "")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if ANDON_EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_HOST = ANDON_EMAIL_HOST or "localhost"
EMAIL_PORT = env_int("ANDON_EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("ANDON_EMAIL_USER", "")
EMAIL_HOST_PASSWORD = env_str("ANDON_EMAIL_PASSWORD", "")
EMAIL_USE_TLS = env_bool("ANDON_EMAIL_USE_TLS", True)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env_str("ANDON_EMAIL_FROM", "andon@localhost")
ANDON_PUBLIC_URL = env_str("ANDON_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
ANDON_ACK_LINK_TTL_S = env_int("ANDON_ACK_LINK_TTL_S", 24 * 3600, minimum=60)
