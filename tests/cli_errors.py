"""Shared assertion for the CLI tests: bad input is one line on stderr and exit code 2."""


def assert_one_line_error(result, *fragments):
    """`result` (typer's CliRunner) failed with exit code 2, one line starting 'error:', no traceback,
    and that line names every fragment."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
