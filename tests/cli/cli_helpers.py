"""Shared checks of the command-line tests (importable from tests/cli: pytest puts the test folder on sys.path)."""


def error_of(main, argv, capsys):
    """Run ``main(argv)`` and check it failed as bad input must: exit code 2, one line on stderr, no traceback.
    Returns that line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err
