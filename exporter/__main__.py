"""`python -m exporter` behaves exactly like the console script."""

from exporter.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
