"""One root: every error class in an errors module is an XrqError, so the CLI translates one type."""

from __future__ import annotations

import importlib
import inspect

import pytest
from click.testing import CliRunner

from cli.main import cli
from common.errors import InputError, XrqError
from db.errors import DatabaseError
from model.errors import ImageError, ModelError, ScanError, TruthFormatError
from worker.errors import WaitTimeoutError, WorkerError

ERROR_MODULES = ("common.errors", "model.errors", "worker.errors", "db.errors")


def _declared(module_name: str) -> list[type[BaseException]]:
    module = importlib.import_module(module_name)
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module_name and issubclass(c, BaseException)]


@pytest.mark.parametrize("module_name", ERROR_MODULES)
def test_every_named_error_sits_under_xrq_error(module_name: str) -> None:
    declared = _declared(module_name)
    assert declared, f"{module_name} declares no errors"
    assert [c.__name__ for c in declared if not issubclass(c, XrqError)] == []


def test_each_package_has_its_own_branch_and_inputs_are_not_the_models_fault() -> None:
    assert {ModelError, WorkerError, DatabaseError} <= set(XrqError.__subclasses__())
    for error in (ScanError, TruthFormatError, ImageError):
        assert issubclass(error, InputError) and not issubclass(error, ModelError), error
    assert issubclass(WaitTimeoutError, WorkerError)


def test_errors_are_declared_only_in_errors_modules() -> None:
    """worker.follow used to declare WaitTimeoutError; the errors modules are where a reader looks."""
    import worker.follow

    assert worker.follow.WaitTimeoutError is WaitTimeoutError
    assert WaitTimeoutError.__module__ == "worker.errors"


@pytest.mark.parametrize("error", [ScanError("no such folder: /x"), WaitTimeoutError("job 1 still has 2 studies"),
                                   InputError("a bad CSV")], ids=lambda e: type(e).__name__)
def test_the_cli_prints_any_xrq_error_as_one_line(monkeypatch: pytest.MonkeyPatch, error: XrqError) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    command = cli.commands["db"].commands["upgrade"]  # type: ignore[attr-defined]
    monkeypatch.setattr(command, "callback", fail)
    result = CliRunner().invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 1 and result.output == f"Error: {error}\n", result.output
