"""`python -m cli`: the same as the `ae` entry point."""

from cli.main import main

main()
