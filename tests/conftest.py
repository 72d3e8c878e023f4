import os
import shutil
import tempfile

# Every test process and every process it starts (Flower's, Ray's) shares one data
# cache for this session, never the user's own (~/.cache/fl-dnn): the first run of a
# configuration builds it, as on a fresh machine. Removed when the session ends.
_OWN_CACHE = None
if "FL_DNN_DATA_CACHE" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="fl-dnn-test-data-cache-")
    os.environ["FL_DNN_DATA_CACHE"] = _OWN_CACHE


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
