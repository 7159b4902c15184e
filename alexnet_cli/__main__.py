"""`python -m alexnet_cli` runs the same app as the `alexnet` command."""

from alexnet_cli.cli import main

if __name__ == "__main__":
    main()
