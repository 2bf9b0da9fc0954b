"""The Image Exchange Desk: application factory."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import Settings
from app.extensions import csrf, db, init_redis, login_manager, migrate

PERMISSIONS_POLICY = ", ".join(f"{feature}=()" for feature in (
    "accelerometer", "autoplay", "camera", "display-capture", "encrypted-media", "fullscreen", "geolocation",
    "gyroscope", "hid", "idle-detection", "magnetometer", "microphone", "midi", "payment",
    "picture-in-picture", "publickey-credentials-get", "screen-wake-lock", "serial", "usb", "web-share",
    "xr-spatial-tracking", "browsing-topics",
))


def create_app(settings: Settings | None = None, **overrides: object) -> Flask:
    """Build the desk: settings, extensions, blueprints, error pages, CLI."""
    if settings is None:
        app = Flask(__name__, instance_relative_config=True)
        instance = Path(app.instance_path)
        instance.mkdir(parents=True, exist_ok=True)
        settings = Settings.from_env(instance)
    else:
        app = Flask(__name__, instance_path=str(settings.instance_path))
    app.config.from_mapping(settings.flask_config())
    app.config.from_mapping(overrides)
    if settings.trusted_proxies:
        # Behind N reverse proxies: the client's address, scheme and host as the nearest N
        # report them (config.Settings.trusted_proxies); never more than N hops back.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    from app.web_request import DeskRequest, install_converters

    app.request_class = DeskRequest  # form and query values without control characters
    install_converters(app)  # URL ids within the id columns' range, call references without controls

    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(app.root_path).parent / "migrations"))
    csrf.init_app(app)
    login_manager.init_app(app)
    init_redis(app)

    # Import every model so that Alembic and relationships see the whole schema.
    from app import audit  # noqa: F401
    from app.admin import bp as admin_bp
    from app.auth import models as _auth_models  # noqa: F401
    from app.auth import training as _training_models  # noqa: F401
    from app.auth.guard import install_guard
    from app.auth.routes import bp as auth_bp
    from app.cds import models as _cd_models  # noqa: F401
    from app.cds.collection import bp as collection_bp
    from app.cds.review import bp as cdreview_bp
    from app.cds.routes import bp as cds_bp
    from app.desk.routes import bp as desk_bp
    from app.intake.autofill import bp as autofill_bp
    from app.intake.routes import bp as intake_bp
    from app.main.routes import bp as main_bp
    from app.patients import models as _patient_models  # noqa: F401
    from app.printing.routes import bp as printing_bp
    from app.requests import models as _request_models  # noqa: F401
    from app.transfers import models as _transfer_models  # noqa: F401
    from app.transfers import quarantine as _quarantine_models  # noqa: F401
    from app.transfers.routes import bp as transfers_bp
    from app.trauma.routes import bp as trauma_bp
    from app.workflow import mail as _mail  # noqa: F401  (installs the after-commit hook)
    from app.workflow import models as _workflow_models  # noqa: F401
    from app.workflow.routes import bp as workflow_bp

    app.register_blueprint(main_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(intake_bp)
    app.register_blueprint(autofill_bp)
    app.register_blueprint(printing_bp)
    app.register_blueprint(desk_bp)
    app.register_blueprint(workflow_bp)
    app.register_blueprint(transfers_bp)
    app.register_blueprint(trauma_bp)
    app.register_blueprint(cdreview_bp)
    app.register_blueprint(cds_bp)
    app.register_blueprint(collection_bp)
    install_guard(app)

    from app import htmx
    from app.errors import install_error_handlers
    from app.templating import install_template_helpers

    install_error_handlers(app)
    install_template_helpers(app)
    htmx.install(app)

    from app.auth.cli import users_cli
    from app.demo import demo_cli
    from app.patients.cli import pas_cli
    from app.transfers.cli import nodes_cli
    from app.workflow.cli import requests_cli

    app.cli.add_command(users_cli)
    app.cli.add_command(pas_cli)
    app.cli.add_command(demo_cli)
    app.cli.add_command(requests_cli)
    app.cli.add_command(nodes_cli)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; "
            "script-src 'self'; object-src 'none'; base-uri 'self'; "
            "form-action 'self'; frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        # The desk uses no device or sensor API: deny them to every page and any frame.
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        if request.endpoint != "static":
            # Pages may hold patient data: never keep them in a shared PC's cache.
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    from app.logs import configure_logging

    configure_logging(app.logger)
    app.logger.setLevel(logging.INFO)
    return app
