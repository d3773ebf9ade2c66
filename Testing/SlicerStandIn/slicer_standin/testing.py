"""``slicer.testing``: how Slicer's ctest runs a module's self-test.

``slicer_add_python_unittest(SCRIPT <Name>.py)`` makes ctest start Slicer with
``--python-code "import slicer.testing; slicer.testing.runUnitTest([...], '<Name>')"``: every
``TestCase`` in ``<Name>.py`` is loaded by unittest and each ``test*`` method runs on its own, after
``setUp``. So each test method of a module's ``<Name>Test`` must pass alone, not only within
``runTest`` (which is what ``slicer.selfTests[name]()`` calls).
"""

from __future__ import annotations

import sys
import unittest


def exitSuccess():
    pass


def exitFailure(message=""):
    raise Exception(message)


def runUnitTest(path, testname):
    """Run every test method of module ``testname`` found on ``path`` (a folder or a list of folders)."""
    sys.path.extend([path] if isinstance(path, str) else path)
    suite = unittest.TestLoader().loadTestsFromName(testname)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    if not result.wasSuccessful():
        exitFailure(f"{testname}: {len(result.failures)} failures, {len(result.errors)} errors")
