import os
import tempfile

# Every test process and every process it starts (Flower's, Ray's) shares one data
# cache for this session, never the user's own (~/.cache/fl-dnn): the first run of a
# configuration builds it, as on a fresh machine.
os.environ.setdefault(
    "FL_DNN_DATA_CACHE", tempfile.mkdtemp(prefix="fl-dnn-test-data-cache-")
)
