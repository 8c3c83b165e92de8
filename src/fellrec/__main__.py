"""Allow ``python -m fellrec``."""

from fellrec.cli import main

if __name__ == "__main__":
    main()
