"""What `vary serve --ray` hands its replicas: the settings as they are, the signing secret included, and
the command's AWS_* and HF_* environment (a Ray worker starts with its node's environment, not ours)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

from vary.cluster.deployments import driver_secrets, shipped_settings, with_driver_env  # noqa: E402
from vary.settings import Settings  # noqa: E402


def test_the_replicas_get_the_signing_secret_itself_not_pydantics_mask(tmp_path: Path) -> None:
    secret = "s" * 40
    settings = Settings(data_dir=tmp_path, signing_secret=secret, database_url="postgresql+psycopg://u:pw@h/db")  # type: ignore[arg-type]
    shipped = shipped_settings(settings)
    assert shipped["signing_secret"] == secret
    rebuilt = Settings(**shipped)
    assert rebuilt.signing_secret is not None and rebuilt.signing_secret.get_secret_value() == secret
    assert rebuilt.database_url == settings.database_url and rebuilt.data_dir == tmp_path
    assert shipped_settings(Settings(data_dir=tmp_path))["signing_secret"] is None


def test_the_replicas_get_the_previous_signing_secret_and_the_allowed_hosts(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        signing_secret="n" * 40,  # type: ignore[arg-type]
        signing_secret_previous="p" * 40,  # type: ignore[arg-type]
        allowed_hosts="vary.example,*.example.org",  # type: ignore[arg-type]
    )
    rebuilt = Settings(**shipped_settings(settings))
    assert (
        rebuilt.signing_secret_previous is not None and rebuilt.signing_secret_previous.get_secret_value() == "p" * 40
    )
    assert rebuilt.allowed_hosts == ("vary.example", "*.example.org")


def test_the_commands_aws_and_hf_variables_reach_the_replicas_and_a_tables_own_win() -> None:
    environ = {"AWS_ENDPOINT_URL_S3": "http://s3:9000", "HF_HUB_OFFLINE": "1", "HOME": "/root", "VARY_PORT": "1"}
    table = {
        "num_replicas": 2,
        "ray_actor_options": {"num_gpus": 1, "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "0"}}},
    }
    options = with_driver_env(table, environ)
    assert options["num_replicas"] == 2 and options["ray_actor_options"]["num_gpus"] == 1
    assert options["ray_actor_options"]["runtime_env"]["env_vars"] == {
        "AWS_ENDPOINT_URL_S3": "http://s3:9000",
        "HF_HUB_OFFLINE": "0",
    }
    assert table["ray_actor_options"]["runtime_env"]["env_vars"] == {"HF_HUB_OFFLINE": "0"}, "the table is not changed"
    assert with_driver_env({"num_replicas": 1}, {"HOME": "/root"}) == {"num_replicas": 1}


def test_credentials_never_go_in_the_runtime_env_which_ray_shows_but_reach_the_replicas_as_an_argument() -> None:
    """Ray shows a runtime_env's env_vars on its dashboard and in its logs: the AWS secret key, a session token
    and the Hub's token are handed to the replica as a bind argument instead; a table's own still win."""
    environ = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-never-shown",
        "AWS_SESSION_TOKEN": "aws-token-never-shown",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "HF_TOKEN": "hf-token-never-shown",
        "HF_HUB_OFFLINE": "1",
    }
    table = {"ray_actor_options": {"runtime_env": {"env_vars": {"AWS_SESSION_TOKEN": "the-tables-own"}}}}
    shown = with_driver_env(table, environ)["ray_actor_options"]["runtime_env"]["env_vars"]
    assert shown == {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "HF_HUB_OFFLINE": "1",
        "AWS_SESSION_TOKEN": "the-tables-own",  # put there by the operator, not by vary
    }
    assert driver_secrets(table, environ) == {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-never-shown",
        "HF_TOKEN": "hf-token-never-shown",
    }
    assert driver_secrets({}, {"HOME": "/root", "VARY_SIGNING_SECRET": "x" * 40}) == {}


def test_the_otel_variables_reach_the_replicas_and_the_exporters_headers_as_a_secret() -> None:
    """The replicas export their own spans (ops/traces.py): the endpoint and service name are shown in the
    runtime_env; the OTLP headers, a collector's credentials, travel as a secret."""
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_SERVICE_NAME": "vary",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer collector-secret",
    }
    shown = with_driver_env({}, environ)["ray_actor_options"]["runtime_env"]["env_vars"]
    assert shown == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SERVICE_NAME": "vary"}
    assert driver_secrets({}, environ) == {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer collector-secret"}


def test_the_replicas_get_the_database_password_itself(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://vary@db/vary", database_password="pw")  # type: ignore[arg-type]
    rebuilt = Settings(**shipped_settings(settings))
    assert rebuilt.database == "postgresql+psycopg://vary:pw@db/vary"


def test_serves_graceful_shutdown_waits_for_the_longest_request_a_replica_may_hold(tmp_path: Path) -> None:
    from vary.cluster.deployments import REPLICA_ATTEMPTS, edge_options, model_options
    from vary.service.catalogue import Catalogue, CatalogueEntry

    settings = Settings(data_dir=tmp_path, ray_attempt_timeout_seconds=300)
    entry = CatalogueEntry(name="m", engine="kandinsky-2.2", weights="tiny-random")
    # A model replica holds one attempt of each request; an edge replica every attempt of its requests.
    assert model_options(entry, settings, has_gpus=True)["graceful_shutdown_timeout_s"] == 300
    edge = edge_options(Catalogue((entry,), default="m"), settings)["graceful_shutdown_timeout_s"]
    assert edge >= REPLICA_ATTEMPTS * 300
    # A catalogue's own [models.ray] value wins, as every Serve option there does.
    own = CatalogueEntry(name="m", engine="kandinsky-2.2", ray={"graceful_shutdown_timeout_s": 60})
    assert model_options(own, settings, has_gpus=False)["graceful_shutdown_timeout_s"] == 60
