"""`python -m exporter` behaves exactly like the console script."""

from exporter.cli import run

if __name__ == "__main__":
    run()
