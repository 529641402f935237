"""``python -m patchcli``: the same as the ``patchcli`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="patchcli")
