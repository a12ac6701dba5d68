"""Annotated dependency aliases used by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.access import Caller, require_operator
from app.metrics import Metrics
from app.services import Services
from app.throttle import check_rate
from workers.dispatch import Dispatcher
from workers.settings import Settings
from workers.store import JobStore
from workers.webhooks import WebhookSender


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_app_settings(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


def get_store(services: Annotated[Services, Depends(get_services)]) -> JobStore:
    return services.store


def get_dispatcher(services: Annotated[Services, Depends(get_services)]) -> Dispatcher:
    return services.dispatcher


def get_metrics(services: Annotated[Services, Depends(get_services)]) -> Metrics:
    return services.metrics


def get_webhooks(services: Annotated[Services, Depends(get_services)]) -> WebhookSender:
    return services.webhooks


_bearer = HTTPBearer(auto_error=False, description="An API key, where the service requires keys")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False,
                           description="The same API key, for clients that cannot send Authorization")


def get_caller(request: Request, services: Annotated[Services, Depends(get_services)],
               bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
               header_key: Annotated[str | None, Depends(_header_key)]) -> Caller:
    """Who is calling: 401 when keys are required and none valid was sent, 429 past its request rate."""
    address = request.client.host if request.client else "unknown"
    caller = services.access.identify(bearer.credentials if bearer else None, header_key, address)
    check_rate(services.throttle, services.settings, caller)
    return caller


def get_operator(services: Annotated[Services, Depends(get_services)],
                 bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                 header_key: Annotated[str | None, Depends(_header_key)]) -> None:
    """Only the operator passes (BBCU_METRICS_KEY): 401 or 403 for anyone else, a tenant's key included."""
    require_operator(services.access, bearer.credentials if bearer else None, header_key)


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WebhooksDep = Annotated[WebhookSender, Depends(get_webhooks)]
CallerDep = Annotated[Caller, Depends(get_caller)]
