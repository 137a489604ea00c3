"""`python -m invkeras.inspection --model M --dataset D ...`: the `inspect` command, run on its own.

The same command object as `invkeras inspect` (`invkeras.commands.inspection`), with the
same options and one-line errors, for a CLI that does not list it.
"""

import sys


def main(argv: list[str] | None = None) -> None:
    import invkeras.commands.inspection  # noqa: F401  (registers the command)
    from invkeras.cli import build_app

    args = ["inspect", *(sys.argv[1:] if argv is None else argv)]
    sys.argv = ["invkeras", *args]  # what every artefact's metadata records as its command
    build_app(args)(args=args, prog_name="invkeras")


if __name__ == "__main__":
    main()
