"""Values taken from the environment stay out of saved configs and logs
(core/redaction.py; issue #20, item 9)."""

from __future__ import annotations

import io
import json
import logging
import sys
from urllib.parse import quote, quote_plus

import pytest
from omegaconf import OmegaConf

from modelsphere.core.errors import ModelSphereError
from modelsphere.core.fileio import atomic_write_json
from modelsphere.core.redaction import (
    EnvironmentValues,
    RedactingFilter,
    activate,
    redact_logs,
    remove_filters,
    saved_config,
)
from modelsphere.environment_guard import refuse_literal_secrets

pytestmark = pytest.mark.unit

TOKEN = "tok-9f3k2x7q"


@pytest.fixture()
def cfg(monkeypatch):
    monkeypatch.setenv("MS_TOKEN", TOKEN)
    monkeypatch.setenv("MS_EPOCHS", "3")
    return OmegaConf.create(
        {
            "data": {"path": "raw/acme-${oc.env:MS_TOKEN}.csv", "name": "acme"},
            "copy": "${data.path}",
            "train": {"max_epochs": "${oc.env:MS_EPOCHS}"},
            "serve": {"api_key": None},
        }
    )


def test_saved_config_keeps_the_interpolation_not_the_value(cfg):
    saved = saved_config(cfg)
    assert saved["data"]["path"] == "raw/acme-${oc.env:MS_TOKEN}.csv"
    # built from it (another key's interpolation): resolved, the value replaced
    assert saved["copy"] == "raw/acme-${oc.env:MS_TOKEN}.csv"
    assert saved["train"]["max_epochs"] == "${oc.env:MS_EPOCHS}"  # short values too
    assert TOKEN not in str(saved)
    assert saved["data"]["name"] == "acme"


def test_files_written_while_active_have_the_value_replaced(cfg, tmp_path):
    activate(EnvironmentValues.of(cfg))
    try:
        atomic_write_json(tmp_path / "m.json", {"raw": f"/data/acme-{TOKEN}.csv"})
    finally:
        activate(EnvironmentValues())
    text = (tmp_path / "m.json").read_text()
    assert TOKEN not in text and "${oc.env:MS_TOKEN}" in text


@pytest.fixture()
def active(cfg):
    activate(EnvironmentValues.of(cfg))
    yield
    activate(EnvironmentValues())


def test_log_lines_have_the_value_replaced(active):
    record = logging.LogRecord("x", logging.INFO, "f", 1, "reading %s", (TOKEN,), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "reading ${oc.env:MS_TOKEN}"


def test_a_logged_traceback_and_stack_have_the_value_replaced(active):
    try:
        open(f"/nonexistent/acme-{TOKEN}.csv")
    except OSError:
        record = logging.LogRecord(
            "x", logging.ERROR, "f", 1, "failed", (), sys.exc_info(), sinfo=TOKEN
        )
    RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "FileNotFoundError" in text and "${oc.env:MS_TOKEN}" in text
    assert TOKEN not in text and record.stack_info == "${oc.env:MS_TOKEN}"


def test_a_value_in_a_url_is_replaced_however_it_was_encoded(monkeypatch):
    key = "ab+c/d=efgh12"  # a base64 key: its URL forms differ from it
    monkeypatch.setenv("MS_KEY", key)
    activate(EnvironmentValues.of(OmegaConf.create({"k": "${oc.env:MS_KEY}"})))
    try:
        for sent in (quote(key, safe=""), quote_plus(key), quote(key).lower()):
            record = logging.LogRecord(
                "x", logging.INFO, "f", 1, "GET /live?key=%s", (sent,), None
            )
            RedactingFilter().filter(record)
            assert record.getMessage() == "GET /live?key=${oc.env:MS_KEY}", sent
    finally:
        activate(EnvironmentValues())


def test_every_handler_is_covered_and_formatters_keep_their_arguments(
    active, monkeypatch
):
    """uvicorn's access logger does not propagate to the root, and its formatter
    unpacks the record's arguments: both must survive the filter."""
    from uvicorn.logging import AccessFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter("%(request_line)s"))
    access = logging.getLogger("modelsphere-test.access")
    monkeypatch.setattr(access, "handlers", [handler])
    monkeypatch.setattr(access, "propagate", False)
    installed = redact_logs()
    try:
        access.warning(
            '%s - "%s %s HTTP/%s" %d',
            *("127.0.0.1:5", "GET", f"/predict?key={TOKEN}", "1.1", 404),
        )
    finally:
        remove_filters(installed)
    assert any(h is handler for h, _ in installed)
    assert stream.getvalue() == "GET /predict?key=${oc.env:MS_TOKEN} HTTP/1.1\n"


def test_a_name_carrying_an_environment_value_is_refused(cfg):
    cfg.data.name = f"acme-{TOKEN}"
    with pytest.raises(ModelSphereError, match=r"data.name would contain"):
        EnvironmentValues.of(cfg).refuse_in_names(cfg)


def test_an_api_key_given_literally_is_refused_and_scrubbed(cfg, tmp_path):
    (tmp_path / "overrides.yaml").write_text("- serve.api_key=literal-key-123\n")
    cfg.serve.api_key = "literal-key-123"
    with pytest.raises(ModelSphereError, match="MODELSPHERE_API_KEY"):
        refuse_literal_secrets(cfg, tmp_path)
    assert "literal-key-123" not in (tmp_path / "overrides.yaml").read_text()
    cfg.serve.api_key = "${oc.env:MS_TOKEN}"  # from the environment: accepted
    refuse_literal_secrets(cfg, tmp_path)


def test_values_too_short_to_be_secrets_leave_numbers_and_hashes_alone(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("MS_SEED", "2024")
    cfg = OmegaConf.create({"seed": "${oc.env:MS_SEED}"})
    activate(EnvironmentValues.of(cfg))
    try:
        payload = {"auc": 0.8202451, "levels": ["user_2024"], "sha": "ab2024cd"}
        atomic_write_json(tmp_path / "m.json", payload)
    finally:
        activate(EnvironmentValues())
    assert json.loads((tmp_path / "m.json").read_text()) == payload
    assert saved_config(cfg)["seed"] == "${oc.env:MS_SEED}"


def test_a_long_value_is_replaced_in_strings_only(monkeypatch, tmp_path):
    monkeypatch.setenv("MS_DIR", "/mnt/customers")
    cfg = OmegaConf.create({"paths": {"data_dir": "${oc.env:MS_DIR}"}})
    activate(EnvironmentValues.of(cfg))
    try:
        payload = {"/mnt/customers": 1, "raw": "/mnt/customers/x.csv", "n": 12024}
        atomic_write_json(tmp_path / "m.json", payload)
    finally:
        activate(EnvironmentValues())
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["raw"] == "${oc.env:MS_DIR}/x.csv"
    assert "/mnt/customers" in written and written["n"] == 12024  # keys, numbers
