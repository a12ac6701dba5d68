"""Annotated dependency aliases used by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.metrics import Metrics
from app.services import Services
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


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
WebhooksDep = Annotated[WebhookSender, Depends(get_webhooks)]
