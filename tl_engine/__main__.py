import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .cli import main  # noqa: E402 - the log level must be set before TensorFlow loads

sys.exit(main())
