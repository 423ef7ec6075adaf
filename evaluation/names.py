"""The names evaluate.py's command line offers, importable without torch: the script builds its
parser (and reports a mistyped flag) before it imports anything heavy."""

IMAGE_METRICS = ("fid", "kid", "isc", "prdc")
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "INCEPTION_WEIGHTS"
