"""The dashboard's ASGI app: every route, the static files, the security headers around them."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import routes_data, routes_notebooks, routes_registry
from .app import HERE, DashboardState, SecurityHeadersApp, login_form, login_submit, logout, not_found
from .context import DashboardContext


def create_app(ctx: DashboardContext) -> Starlette:
    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        *routes_registry.ROUTES, *routes_data.ROUTES, *routes_notebooks.ROUTES,
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.dashboard = DashboardState(ctx)
    return SecurityHeadersApp(app)
