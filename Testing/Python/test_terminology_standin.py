"""Checks of the stand-in terminology files against the real terminology logic.

The ``slicer-core`` wheel ships ``vtkSlicerTerminologiesModuleLogic`` but not
Slicer's ``*.term.json`` files. The stand-in carries small files of its own under
``Testing/SlicerStandIn/slicer_standin/Resources/Terminologies``. These tests boot
the logic on a bare scene (no other stand-in code), point it at that folder and
check that it loads them without any VTK error or warning, and that a terminology
entry can be found, serialized and stored on a ``vtkSegment``.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import slicer
from vtkmodules.vtkCommonCore import vtkOutputWindow, vtkStringOutputWindow

TERMINOLOGY_FOLDER = (
    Path(__file__).resolve().parents[1] / "SlicerStandIn" / "slicer_standin" / "Resources" / "Terminologies"
)

GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"

TERMINOLOGY_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"
REGION_SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/anatomic-context-schema.json#"

# File name the logic loads by default -> (schema, name key, context name)
EXPECTED_FILES = {
    "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.term.json": (
        TERMINOLOGY_SCHEMA,
        "SegmentationCategoryTypeContextName",
        GENERAL_ANATOMY,
    ),
    "SegmentationCategoryTypeModifier-DICOM-Master.term.json": (
        TERMINOLOGY_SCHEMA,
        "SegmentationCategoryTypeContextName",
        DICOM_MASTER,
    ),
    "AnatomicRegionAndModifier-DICOM-Master.term.json": (REGION_SCHEMA, "AnatomicContextName", REGION_CONTEXT),
}

TISSUE = ("SCT", "85756007", "Tissue")
ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
GRAY_MATTER = ("SCT", "389081007", "Gray matter")
WHITE_MATTER = ("SCT", "389080008", "White matter")
CSF = ("SCT", "65216001", "Cerebrospinal fluid")

GRAY_MATTER_TERMINOLOGY = GENERAL_ANATOMY + "~SCT^85756007^Tissue~SCT^389081007^Gray matter~^^~~^^~^^"

# Color the logic gives a type that has no recommendedDisplayRGBValue
INVALID_COLOR = (127, 127, 127)


class Boot(NamedTuple):
    scene: "slicer.vtkMRMLScene"
    app_logic: "slicer.vtkSlicerApplicationLogic"
    logic: "slicer.vtkSlicerTerminologiesModuleLogic"
    messages: vtkStringOutputWindow


def vtk_messages(boot: Boot) -> str:
    return boot.messages.GetOutput() or ""


def assert_no_vtk_messages(boot: Boot) -> None:
    text = vtk_messages(boot)
    assert text == "", "VTK logged:\n" + text


@pytest.fixture
def boot() -> Iterator[Boot]:
    """Minimal boot of the terminology logic, with VTK messages captured."""
    previous_window = vtkOutputWindow.GetInstance()
    messages = vtkStringOutputWindow()
    vtkOutputWindow.SetInstance(messages)
    try:
        scene = slicer.vtkMRMLScene()
        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(scene)
        logic = slicer.vtkSlicerTerminologiesModuleLogic()
        logic.SetModuleShareDirectory(str(TERMINOLOGY_FOLDER))
        # Setting the scene is what makes the logic load its default contexts.
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        yield Boot(scene, app_logic, logic, messages)
    finally:
        vtkOutputWindow.SetInstance(previous_window)


def make_entry(context_name: str, category, type_, modifier=None, region=None, region_modifier=None):
    """Entry holding only codes (scheme, value); meanings and colors come from the logic."""
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(context_name)
    pairs = [
        (entry.GetCategoryObject(), category),
        (entry.GetTypeObject(), type_),
        (entry.GetTypeModifierObject(), modifier),
        (entry.GetRegionObject(), region),
        (entry.GetRegionModifierObject(), region_modifier),
    ]
    for coded, code in pairs:
        if code is not None:
            coded.SetCodingSchemeDesignator(code[0])
            coded.SetCodeValue(code[1])
    return entry


def types_in_category(logic, context_name: str, category_meaning: str) -> list["slicer.vtkSlicerTerminologyType"]:
    category = slicer.vtkSlicerTerminologyCategory()
    for index in range(logic.GetNumberOfCategoriesInTerminology(context_name)):
        assert logic.GetNthCategoryInTerminology(context_name, index, category)
        if category.GetCodeMeaning() == category_meaning:
            break
    else:
        raise AssertionError(f"no category {category_meaning!r} in {context_name!r}")
    found = []
    for index in range(logic.GetNumberOfTypesInTerminologyCategory(context_name, category)):
        type_ = slicer.vtkSlicerTerminologyType()
        assert logic.GetNthTypeInTerminologyCategory(context_name, category, index, type_)
        found.append(type_)
    return found


@pytest.mark.parametrize("file_name", sorted(EXPECTED_FILES))
def test_files_are_our_own_small_subset(file_name):
    schema, name_key, context_name = EXPECTED_FILES[file_name]
    document = json.loads((TERMINOLOGY_FOLDER / file_name).read_text(encoding="utf-8"))
    assert document["@schema"] == schema
    assert document[name_key] == context_name
    description = document["description"]
    assert "SlicerDeepLearning test stand-in" in description
    assert "NOT 3D Slicer" in description


def test_share_directory_loads_without_messages(boot):
    assert boot.logic.GetModuleShareDirectory() == str(TERMINOLOGY_FOLDER)
    assert_no_vtk_messages(boot)

    terminology_names: list[str] = []
    boot.logic.GetLoadedTerminologyNames(terminology_names)
    assert sorted(terminology_names) == sorted([GENERAL_ANATOMY, DICOM_MASTER])

    region_context_names: list[str] = []
    boot.logic.GetLoadedRegionContextNames(region_context_names)
    assert region_context_names == [REGION_CONTEXT]

    assert boot.logic.IsTerminologyContextLoaded(GENERAL_ANATOMY)
    assert_no_vtk_messages(boot)


def test_missing_share_directory_is_reported(tmp_path):
    """The capture works: an empty share directory makes the logic log errors."""
    previous_window = vtkOutputWindow.GetInstance()
    messages = vtkStringOutputWindow()
    vtkOutputWindow.SetInstance(messages)
    try:
        scene = slicer.vtkMRMLScene()
        logic = slicer.vtkSlicerTerminologiesModuleLogic()
        logic.SetModuleShareDirectory(str(tmp_path))
        logic.SetMRMLScene(scene)
        text = messages.GetOutput() or ""
    finally:
        vtkOutputWindow.SetInstance(previous_window)
    for file_name in EXPECTED_FILES:
        assert str(tmp_path / file_name) in text


def test_tissue_category_types_and_colors(boot):
    types = types_in_category(boot.logic, GENERAL_ANATOMY, "Tissue")
    by_meaning = {t.GetCodeMeaning(): t for t in types}
    for scheme, value, meaning in (GRAY_MATTER, WHITE_MATTER, CSF):
        type_ = by_meaning[meaning]
        assert (type_.GetCodingSchemeDesignator(), type_.GetCodeValue()) == (scheme, value)
        assert tuple(type_.GetRecommendedDisplayRGBValue()) != INVALID_COLOR

    organs = types_in_category(boot.logic, GENERAL_ANATOMY, "Anatomical Structure")
    organ_codes = {t.GetCodeMeaning(): t.GetCodeValue() for t in organs}
    assert organ_codes == {
        "Brain": "12738006",
        "Liver": "10200004",
        "Kidney": "64033007",
        "Spleen": "78961009",
        "Lung": "39607008",
    }
    for organ in organs:
        assert tuple(organ.GetRecommendedDisplayRGBValue()) != INVALID_COLOR
    assert_no_vtk_messages(boot)


def test_find_gray_matter_and_store_on_segment(boot):
    logic = boot.logic

    # Which loaded terminologies hold Tissue / Gray matter
    names = logic.FindTerminologyNames(TISSUE[0], TISSUE[1], GRAY_MATTER[0], GRAY_MATTER[1], "", "", [])
    assert list(names) == [GENERAL_ANATOMY]

    # Fill an entry from codes only
    entry = make_entry(GENERAL_ANATOMY, TISSUE, GRAY_MATTER)
    assert logic.UpdateEntryFromLoadedTerminologies(entry, [], [])
    assert entry.GetCategoryObject().GetCodeMeaning() == "Tissue"
    assert entry.GetTypeObject().GetCodeMeaning() == "Gray matter"
    assert tuple(entry.GetTypeObject().GetRecommendedDisplayRGBValue()) == (160, 160, 190)

    serialized = slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)
    assert serialized == GRAY_MATTER_TERMINOLOGY

    segment = slicer.vtkSegment()
    segment.SetTerminology(serialized)
    assert segment.HasTerminology()
    assert segment.GetTerminology() == GRAY_MATTER_TERMINOLOGY

    # And back: string -> entry -> metadata from the loaded files
    restored = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(segment.GetTerminology(), restored)
    assert restored.GetTerminologyContextName() == GENERAL_ANATOMY
    assert restored.GetTypeObject().GetCodeValue() == GRAY_MATTER[1]
    assert logic.UpdateEntryFromLoadedTerminologies(restored, [], [])
    assert tuple(restored.GetTypeObject().GetRecommendedDisplayRGBValue()) == (160, 160, 190)
    assert_no_vtk_messages(boot)


def test_dicom_master_places_brain_tissues_under_anatomical_structure(boot):
    names = boot.logic.FindTerminologyNames(
        ANATOMICAL_STRUCTURE[0], ANATOMICAL_STRUCTURE[1], GRAY_MATTER[0], GRAY_MATTER[1], "", "", []
    )
    assert list(names) == [DICOM_MASTER]
    assert_no_vtk_messages(boot)


def test_find_by_slicer_label_with_modifier(boot):
    entry = slicer.vtkSlicerTerminologyEntry()
    assert boot.logic.FindTypeInTerminologyBy3dSlicerLabel(GENERAL_ANATOMY, "left kidney", entry)
    assert slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry) == (
        GENERAL_ANATOMY + "~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^7771000^Left~~^^~^^"
    )
    assert_no_vtk_messages(boot)


def test_region_with_modifier(boot):
    entry = make_entry(
        GENERAL_ANATOMY, TISSUE, GRAY_MATTER, region=("SCT", "64033007"), region_modifier=("SCT", "7771000")
    )
    assert boot.logic.UpdateEntryFromLoadedTerminologies(entry, [], [])
    assert entry.GetRegionContextName() == REGION_CONTEXT
    assert slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry) == (
        GENERAL_ANATOMY
        + "~SCT^85756007^Tissue~SCT^389081007^Gray matter~^^~"
        + REGION_CONTEXT
        + "~SCT^64033007^Kidney~SCT^7771000^Left"
    )
    assert boot.logic.GetNumberOfRegionsInRegionContext(REGION_CONTEXT) == 4
    assert_no_vtk_messages(boot)


def test_default_segment_terminology_resolves(boot):
    """A new vtkSegment carries a Tissue/Tissue entry; the stand-in files know it."""
    default = slicer.vtkSegment().GetTerminology()
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(default, entry)
    assert entry.GetTerminologyContextName() == GENERAL_ANATOMY
    assert entry.GetTypeObject().GetCodeValue() == TISSUE[1]
    assert boot.logic.UpdateEntryFromLoadedTerminologies(entry, [], [])
    assert tuple(entry.GetTypeObject().GetRecommendedDisplayRGBValue()) != INVALID_COLOR
    assert_no_vtk_messages(boot)
