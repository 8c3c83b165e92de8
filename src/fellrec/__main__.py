"""Allow ``python -m fellrec``."""

from fellrec.console import main

if __name__ == "__main__":
    main()
