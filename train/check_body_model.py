"""Load a body model, run it at batch 64 and compare its rest skeleton (see pare.body.check)."""

from pare.body.check import main

if __name__ == "__main__":
    raise SystemExit(main())
