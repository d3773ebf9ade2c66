"""``python -m TrainingDataExportLib``: the command line (see :mod:`TrainingDataExportLib.cli`).

Run it from the TrainingDataExport folder (or with it on ``PYTHONPATH``)::

    cd TrainingDataExport && python -m TrainingDataExportLib check --cases cases.csv --schema labels.json

``ModelRegistryLib`` and ``DeepSegmentLib``, when not importable, are found in the sibling folders of this
repository (see the package's ``__init__``), so no other set-up is needed. (In an installed extension every
module's Lib lies in one folder, ``qt-scripted-modules``, and is found from there.)
"""

import sys

from TrainingDataExportLib.cli import main

sys.exit(main())
