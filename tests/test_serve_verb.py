"""`bloodcell serve` only parses and calls :func:`bloodcell.server.serve`, which owns the checks."""

from __future__ import annotations

import pytest

import bloodcell
import bloodcell.server as server
import bloodcell.server.run as run
from bloodcell.cli.main import main
from bloodcell.core.errors import ConfigError


def test_python_verb_is_the_server_function():
    assert bloodcell.serve is server.serve is run.serve


def test_cli_calls_serve_with_its_flags(monkeypatch):
    seen = {}
    monkeypatch.setattr(server, "serve", lambda model, **kw: seen.update(model=model, **kw) or 0)
    assert main(["serve", "-m", "m.onnx", "--port", "9001", "--max-megapixels", "2",
                 "--allowed-hosts", "cells.lab", "lab.local"]) == 0
    assert seen["model"] == "m.onnx" and seen["port"] == 9001 and seen["host"] == "127.0.0.1"
    assert seen["max_megapixels"] == 2.0 and seen["allowed_hosts"] == ["cells.lab", "lab.local"]
    assert seen["max_files"] == 64 and seen["workers"] == 1


@pytest.mark.parametrize("kw", [{"workers": 0}, {"max_files": 0}, {"max_upload_mb": 0}, {"max_megapixels": -1}])
def test_serve_refuses_bad_limits(kw):
    with pytest.raises(ConfigError):
        server.serve(None, **kw)


def test_serve_answers_to_the_bound_host(monkeypatch):
    built = {}
    monkeypatch.setattr(run, "create_app", lambda model, **kw: built.update(kw) or "app")
    monkeypatch.setattr(run.uvicorn, "run", lambda app, **kw: built.update(app=app, **kw))
    monkeypatch.setattr(run, "check_address", lambda host, port: None)  # no such interface here
    assert server.serve("model", host="10.1.2.3", port=8123, allowed_hosts=["lab"]) == 0
    assert built["app"] == "app" and built["host"] == "10.1.2.3" and built["port"] == 8123
    assert built["allowed_hosts"] == ["10.1.2.3", "lab"]
    assert run.bound_hosts("::1") == ["[::1]"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "99999999"], "--port must be between 0 and 65535"),
    (["--host", "no.such.host.invalid"], "is not an address or a name"),
])
def test_bad_listen_address_is_one_line(argv, message, capsys):
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_port_in_use_is_one_line_before_the_model_loads(capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert f"Cannot listen on 127.0.0.1:{port}" in err and "Address already in use" in err
