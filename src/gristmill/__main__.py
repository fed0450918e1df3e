"""`python -m gristmill` runs the CLI (never run a module inside the package as a script)."""

from gristmill.cli import main

if __name__ == "__main__":
    main()
