"""Entry point of ``python -m bridge`` and of the ``kaspa-tor-bridge`` script.

Importing the CLI takes about half a second (trio, typer, h2, stem ...); a Ctrl-C in that time
ends the program the way one a moment later does (``interrupted``, status 130), not with a
Python traceback.
"""

import sys


def main() -> None:
    try:
        from bridge.cli.main import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
