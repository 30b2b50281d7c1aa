"""``python -m dicomproxy`` is the same as the ``dicomproxy`` command."""

from dicomproxy.cli import main

if __name__ == "__main__":
    main()
