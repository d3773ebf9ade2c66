"""Boot real MRML from the ``slicer-core`` wheel the way Slicer's core application does.

qSlicerCoreApplication creates one scene and one ``vtkSlicerApplicationLogic``, fills the scene with the
default color nodes, then each loadable module creates its logic and registers it with the application
logic. Several logics only work after that registration: segment creation needs the segmentations logic
to have registered its converter rules, ``slicer.util.addVolumeFromArray`` needs the volumes logic, and
terminology look-ups need the terminologies logic with its share directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import vtk

import slicer

TERMINOLOGIES_DIRECTORY = os.path.join(os.path.dirname(__file__), "Resources", "Terminologies")


@dataclass
class CoreLogics:
    """The scene, the application logic and the module logics that Slicer's core modules own.

    ``module_logics`` maps the module's name as Slicer spells it ("Volumes") to its logic.
    """

    scene: slicer.vtkMRMLScene
    application_logic: slicer.vtkSlicerApplicationLogic
    module_logics: dict = field(default_factory=dict)


def _register(core: CoreLogics, module_name: str, logic) -> None:
    logic.SetMRMLApplicationLogic(core.application_logic)
    logic.SetMRMLScene(core.scene)
    core.application_logic.SetModuleLogic(module_name, logic)
    core.module_logics[module_name] = logic


def boot_core_logics() -> CoreLogics:
    """Create a scene with the logics of the core modules our extension relies on.

    The order follows Slicer's: the application logic and default colors first, then the volumes,
    terminologies, segmentations, subject hierarchy and sequences logics.
    """
    scene = slicer.vtkMRMLScene()
    application_logic = slicer.vtkSlicerApplicationLogic()
    application_logic.SetMRMLScene(scene)
    # The application logic owns a color logic of its own; Slicer gives it the scene and the default
    # color tables (generic anatomy colors, labels, ...) before any module loads.
    application_logic.GetColorLogic().SetMRMLScene(scene)
    application_logic.GetColorLogic().AddDefaultColorNodes()
    # No views exist without a GUI, but the logic expects the (empty) collections.
    application_logic.SetSliceLogics(vtk.vtkCollection())
    application_logic.SetViewLogics(vtk.vtkCollection())

    core = CoreLogics(scene=scene, application_logic=application_logic)
    _register(core, "Colors", slicer.vtkMRMLColorLogic())
    _register(core, "Volumes", slicer.vtkSlicerVolumesLogic())
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    # The wheel ships no terminology files; the stand-in carries a small subset in Slicer's format.
    terminologies.SetModuleShareDirectory(TERMINOLOGIES_DIRECTORY)
    _register(core, "Terminologies", terminologies)
    _register(core, "Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
    _register(core, "SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic())
    _register(core, "Sequences", slicer.vtkSlicerSequencesLogic())
    return core
