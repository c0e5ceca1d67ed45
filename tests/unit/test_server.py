"""A real `mlflow server`: a job, a joblib sweep and a submitit sweep land in it and read back.

One server per session (SQLite backend, artifacts proxied by the server), started on a free
127.0.0.1 port with a bounded wait for readiness and killed at the end.
"""

from __future__ import annotations

import time

import pytest
from conftest import free_port

from gradkit.reporting import report, reproduce


@pytest.mark.parametrize("command", ["report", "reproduce"])
def test_no_server_is_one_line_within_seconds(command, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = ["tracking=server", f"tracking.uri={uri}"]
    started = time.monotonic()

    with pytest.raises(SystemExit) as exit_:
        if command == "report":
            report.main(args)
        else:
            reproduce.main(["0123456789abcdef0123456789abcdef", *args])

    assert time.monotonic() - started < 10
    assert exit_.value.code == (1 if command == "report" else 2)
    err = capsys.readouterr().err
    assert err.strip() == (f"gradkit: no MLflow server at {uri}: connection refused; start one "
                           "with `make server` or fix tracking.uri")
