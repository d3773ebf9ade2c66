"""``python -m TrainingDataExportLib``: the command line (see :mod:`TrainingDataExportLib.cli`).

Run it from the TrainingDataExport folder (or with it on ``PYTHONPATH``)::

    cd TrainingDataExport && python -m TrainingDataExportLib check --cases cases.csv --schema labels.json

The label schema is read with ``ModelRegistryLib``; when that is not importable, the sibling ``ModelRegistry``
folder of this repository is added to ``sys.path``, so no other set-up is needed. (In an installed extension
both Libs lie in one folder, ``qt-scripted-modules``, and are found from there.)
"""

import os
import sys

try:
    import ModelRegistryLib  # noqa: F401
except ImportError:
    MODULES_FOLDER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.append(os.path.join(MODULES_FOLDER, "ModelRegistry"))

from TrainingDataExportLib.cli import main

sys.exit(main())
