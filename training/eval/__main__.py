"""python -m training.eval --model resources/models/rsa-default --split test [--count N]

Evaluates an RSA checkpoint folder on the Synthetic Earth's held-out split (see rsa.py).
"""

import sys

from training.eval.rsa import main

if __name__ == "__main__":
    sys.exit(main())
