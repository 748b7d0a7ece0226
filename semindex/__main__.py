"""`python -m semindex` is the same as the `semindex` command."""

from .cli import main

if __name__ == "__main__":
    main()
