"""Stand-in for Slicer's ``ctk`` module (CTK widgets wrapped by PythonQt) on PySide6.

Each class imitates the public API of the CTK widget of the same name (commontk/CTK,
Libs/Widgets/*.h): its Qt properties, signals and the slots modules call, so that panel
code and ``.ui`` files using them behave as in Slicer.  The widgets are drawn and sized
like their CTK counterparts closely enough for offscreen screenshots; they do not copy
CTK's code.  Importing this module imports ``qt`` first, so the widgets get PythonQt's
attribute semantics (``collapsibleButton.collapsed = True``).
"""

from __future__ import annotations

import re

import qt  # noqa: F401  (installs PythonQt semantics before the classes below are used)
from PySide6.QtCore import Property, QEvent, QRect, QRegularExpression, QSettings, QSize, Qt, Signal
from PySide6.QtGui import QPainter, QPalette, QRegularExpressionValidator
from PySide6.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFileSystemModel,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QSizePolicy,
    QSlider,
    QStyle,
    QStyleOptionButton,
    QToolButton,
    QWidget,
)


class ctkCollapsibleButton(QAbstractButton):
    """A checkable header (arrow + text) that shows or hides the widgets it contains.

    As in CTK: ``checked`` means expanded and ``collapsed`` is its negation; collapsing
    hides the child widgets (a child hidden explicitly stays hidden when expanded again)
    and emits ``contentsCollapsed(bool)``; the layout set on the button (for example
    ``qt.QFormLayout(collapsibleButton)``) lies below the header.
    """

    contentsCollapsed = Signal(bool)

    def __init__(self, *arguments):
        text = arguments[0] if arguments and isinstance(arguments[0], str) else ""
        parent = arguments[-1] if arguments and isinstance(arguments[-1], QWidget) else None
        super().__init__(parent)
        self._collapsed = False
        self._collapsedHeight = 14
        self._flat = False
        self._forcingVisibility = False
        self._savedMaximumHeight = self.maximumHeight
        self.setText(text)
        self.setCheckable(True)
        self.setChecked(True)
        self.setSizePolicy(QSizePolicy(QSizePolicy.Minimum, QSizePolicy.Preferred))
        self.setContentsMargins(0, self._buttonSizeHint().height(), 0, 0)
        self.setBackgroundRole(QPalette.Window)
        self.toggled.connect(self._onToggled)

    def _isCollapsed(self):
        return self._collapsed

    def setCollapsed(self, collapsed):
        if self.isCheckable():
            self.setChecked(not collapsed)
        else:
            self._collapse(collapsed)

    collapsed = Property(bool, _isCollapsed, setCollapsed, notify=contentsCollapsed)

    def _getCollapsedHeight(self):
        return self._collapsedHeight

    def setCollapsedHeight(self, height):
        self._collapsedHeight = height
        self.updateGeometry()

    collapsedHeight = Property(int, _getCollapsedHeight, setCollapsedHeight)

    def isFlat(self):
        return self._flat

    def setFlat(self, flat):
        self._flat = flat
        self.update()

    flat = Property(bool, isFlat, setFlat)

    def _onToggled(self, checked):
        if self.isCheckable():
            self._collapse(not checked)

    def _collapse(self, collapsed):
        if collapsed == self._collapsed:
            return
        self._collapsed = collapsed
        if collapsed:
            self._savedMaximumHeight = self.maximumHeight
            self.setMaximumHeight(self.sizeHint().height())
        else:
            self.setMaximumHeight(self._savedMaximumHeight)
        for child in self._childWidgets():
            self._setChildVisibility(child)
        self.updateGeometry()
        self.contentsCollapsed.emit(collapsed)

    def _childWidgets(self):
        return [child for child in self.children() if isinstance(child, QWidget)]

    def _setChildVisibility(self, child):
        # Like CTK, leave children alone until the button is created (shown once).
        if not self.testAttribute(Qt.WA_WState_Created):
            return
        explicitlyHidden = child.property("visibilityToParent") is False
        self._forcingVisibility = True
        try:
            child.setVisible(not self._collapsed and not explicitlyHidden)
            if not explicitlyHidden:
                child.setAttribute(Qt.WA_WState_ExplicitShowHide, False)
        finally:
            self._forcingVisibility = False

    def setVisible(self, visible):
        wasCreated = self.testAttribute(Qt.WA_WState_Created)
        self._forcingVisibility = True
        try:
            super().setVisible(visible)
        finally:
            self._forcingVisibility = False
        if not wasCreated and self.testAttribute(Qt.WA_WState_Created):
            for child in self._childWidgets():
                self._setChildVisibility(child)

    def childEvent(self, event):
        child = event.child()
        if event.type() == QEvent.ChildAdded and isinstance(child, QWidget):
            if child.testAttribute(Qt.WA_WState_ExplicitShowHide) and child.testAttribute(Qt.WA_WState_Hidden):
                child.setProperty("visibilityToParent", False)
            child.installEventFilter(self)
            self._setChildVisibility(child)
        super().childEvent(event)

    def eventFilter(self, watched, event):
        if not self._forcingVisibility:
            if event.type() == QEvent.ShowToParent:
                watched.setProperty("visibilityToParent", True)
                self._setChildVisibility(watched)
            elif event.type() == QEvent.HideToParent:
                watched.setProperty("visibilityToParent", False)
        return super().eventFilter(watched, event)

    def _buttonSizeHint(self):
        metrics = self.fontMetrics()
        indicator = self.style().pixelMetric(QStyle.PM_IndicatorWidth, None, self)
        height = max(metrics.height(), indicator) + 8
        width = metrics.horizontalAdvance(self.text) + indicator + 16
        return QSize(width, height)

    def sizeHint(self):
        button = self._buttonSizeHint()
        if self._collapsed:
            return button + QSize(0, self._collapsedHeight)
        layout = self.layout()
        if layout is None:
            return button
        contents = layout.sizeHint()
        return QSize(max(button.width(), contents.width()), button.height() + contents.height())

    def minimumSizeHint(self):
        return self.sizeHint() if self._collapsed else super().minimumSizeHint()

    def paintEvent(self, event):
        painter = QPainter(self)
        style = self.style()
        header = QRect(0, 0, self.width, self._buttonSizeHint().height())
        option = QStyleOptionButton()
        option.initFrom(self)
        option.rect = header
        if self.isDown():
            option.state |= QStyle.State_Sunken
        if not self._flat:
            style.drawPrimitive(QStyle.PE_PanelButtonCommand, option, painter, self)
        indicator = style.pixelMetric(QStyle.PM_IndicatorWidth, option, self)
        arrow = QStyleOptionButton(option)
        arrow.rect = QRect(4, (header.height() - indicator) // 2, indicator, indicator)
        arrowElement = QStyle.PE_IndicatorArrowRight if self._collapsed else QStyle.PE_IndicatorArrowDown
        style.drawPrimitive(arrowElement, arrow, painter, self)
        textRect = header.adjusted(indicator + 10, 0, -4, 0)
        style.drawItemText(
            painter, textRect, int(Qt.AlignLeft | Qt.AlignVCenter), option.palette, self.isEnabled(), self.text
        )
        if not self._collapsed:
            painter.setPen(self.palette.color(QPalette.Mid))
            painter.drawRect(QRect(0, header.height(), self.width - 1, self.height - header.height() - 1))
        painter.end()

    def hitButton(self, position):
        return QRect(0, 0, self.width, self._buttonSizeHint().height()).contains(position)


class ctkCollapsibleGroupBox(QGroupBox):
    """A checkable group box whose contents collapse when it is unchecked (CTK: ``collapsed``).

    Children hidden before collapsing stay hidden when the box is expanded again.
    """

    def __init__(self, *arguments):
        title = arguments[0] if arguments and isinstance(arguments[0], str) else ""
        parent = arguments[-1] if arguments and isinstance(arguments[-1], QWidget) else None
        super().__init__(title, parent)
        self._collapsedHeight = 14
        self._hiddenBeforeCollapse = []
        self.setCheckable(True)
        self.setChecked(True)
        self.toggled.connect(self._expand)

    def _isCollapsed(self):
        return not self.isChecked()

    def setCollapsed(self, collapsed):
        self.setChecked(not collapsed)

    collapsed = Property(bool, _isCollapsed, setCollapsed)

    def _getCollapsedHeight(self):
        return self._collapsedHeight

    def setCollapsedHeight(self, height):
        self._collapsedHeight = height
        self.updateGeometry()

    collapsedHeight = Property(int, _getCollapsedHeight, setCollapsedHeight)

    def _expand(self, expanded):
        children = [child for child in self.children() if isinstance(child, QWidget)]
        if expanded:
            for child in children:
                if child not in self._hiddenBeforeCollapse:
                    child.setVisible(True)
            self._hiddenBeforeCollapse = []
            self.setMaximumHeight(16777215)
        else:
            self._hiddenBeforeCollapse = [child for child in children if child.isHidden()]
            for child in children:
                child.setVisible(False)
            self.setMaximumHeight(self.fontMetrics().height() + self._collapsedHeight)


# ctk::nameFilterToExtensions (Libs/Core/ctkUtils.cpp): "Label (*.a *.b)", or a bare wildcard.
_NAME_FILTER = re.compile(r"^(.*)\(([a-zA-Z0-9_.*? +;#\-\[\]@\{\}/!<>\$%&=^~:\|]*)\)$")
_VALID_WILDCARD = re.compile(r"^[\w\s\.\*\_\~\$\[\]]+$")
_EXTENSION = re.compile(r"\*\.(\w+)")


def _nameFiltersPattern(nameFilters):
    """The validator pattern CTK builds from name filters (ctk::nameFiltersToRegExp, Slicer 5.8's CTK).

    Each ``*.ext`` becomes ``.*\\.ext?$``, matched against the whole path and case-sensitively: so
    ``*.csv`` accepts ``/data/cases.csv`` but neither ``Cases.CSV`` nor ``cases.csv.bak``, and an extension
    with a dot (``*.nii.gz``) keeps only its first part (``.*\\.nii?$``). No extension at all gives
    ``.+``: any path but the empty one.
    """
    alternatives = []
    for nameFilter in nameFilters:
        match = _NAME_FILTER.search(nameFilter)
        if match:
            extensions = match.group(2).split()
        elif _VALID_WILDCARD.search(nameFilter):
            extensions = [nameFilter]
        else:
            extensions = []
        for extension in extensions:
            found = _EXTENSION.search(extension)
            if found:
                alternatives.append(".*\\." + found.group(1) + "?$")
    return "(" + "|".join(alternatives) + ")" if alternatives else ".+"


class ctkPathLineEdit(QWidget):
    """An editable path field with a browse button (CTK ``ctkPathLineEdit``, as in Slicer 5.8).

    As in CTK, the field is an editable combo box whose line edit has a validator built from
    ``nameFilters`` (see ``_nameFiltersPattern``), and every change of its text (every keystroke, as well
    as ``currentPath = ...``, a path chosen with the browse button and a completion highlighted in the
    popup of its file completer, ctkFileCompleter) runs ``updateHasValidInput``:
    ``currentPathChanged(QString)`` is emitted whenever the new text is acceptable (so per keystroke while
    the user types a valid path; never for an empty path), and ``validInputChanged(bool)`` when
    acceptability changes. Setting ``nameFilters`` or ``filters`` emits nothing. ``filters`` holds the
    ``Filter`` flags below, ``options`` the ``Option`` flags (QFileDialog's): they choose and configure the
    dialog ``browse()`` opens (a save dialog for ``Files|Writable``, which asks before overwriting an
    existing file unless ``DontConfirmOverwrite`` is set).
    """

    Dirs = 0x001
    Files = 0x002
    Drives = 0x004
    NoSymLinks = 0x008
    AllEntries = Dirs | Files | Drives
    TypeMask = 0x00F
    Readable = 0x010
    Writable = 0x020
    Executable = 0x040
    PermissionMask = 0x070
    Modified = 0x080
    Hidden = 0x100
    System = 0x200
    AccessMask = 0x3F0
    AllDirs = 0x400
    CaseSensitive = 0x800
    NoDotAndDotDot = 0x1000  # CTK's enum keeps Qt 4's value; QDir's (NoDot | NoDotDot) is 0x6000
    NoDot = 0x2000
    NoDotDot = 0x4000
    NoFilter = -1

    ShowDirsOnly = 0x01
    DontResolveSymlinks = 0x02
    DontConfirmOverwrite = 0x04
    DontUseSheet = 0x08
    DontUseNativeDialog = 0x10
    ReadOnly = 0x20
    HideNameFilterDetails = 0x40

    currentPathChanged = Signal(str)
    validInputChanged = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        # QDir::AllEntries | QDir::NoDotAndDotDot | QDir::Readable | QDir::Executable
        self._filters = self.AllEntries | self.NoDot | self.NoDotDot | self.Readable | self.Executable
        self._options = 0
        self._nameFilters = []
        self._label = ""
        self._settingKey = ""
        self._hasValidInput = False
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self._comboBox = QComboBox(self)
        self._comboBox.setEditable(True)
        self._comboBox.setInsertPolicy(QComboBox.NoInsert)
        self._comboBox.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self._validator = QRegularExpressionValidator(self)
        self._comboBox.lineEdit().setValidator(self._validator)
        # ctkFileCompleter: a popup completer over the file system; highlighting a completion sets the text.
        completer = QCompleter(QFileSystemModel(self), self)
        completer.setCompletionMode(QCompleter.PopupCompletion)
        self._comboBox.lineEdit().setCompleter(completer)
        self._browseButton = QToolButton(self)
        self._browseButton.setText("...")
        self._browseButton.setToolTip("Open a dialog")
        self._historyVisible = True
        layout.addWidget(self._comboBox)
        layout.addWidget(self._browseButton)
        self._updateFilter()
        self._comboBox.lineEdit().textChanged.connect(self._updateHasValidInput)
        self._browseButton.clicked.connect(self.browse)

    def _lineEdit(self):
        return self._comboBox.lineEdit()

    def _getCurrentPath(self):
        return QLineEdit.text(self._lineEdit())

    def setCurrentPath(self, path):
        QLineEdit.setText(self._lineEdit(), path)

    currentPath = Property(str, _getCurrentPath, setCurrentPath, user=True)

    def _getFilters(self):
        return self._filters

    def setFilters(self, filters):
        self._filters = int(filters)
        self._updateFilter()

    filters = Property(int, _getFilters, setFilters)

    def _getOptions(self):
        return self._options

    def setOptions(self, options):
        self._options = int(options)

    options = Property(int, _getOptions, setOptions)

    def _getNameFilters(self):
        return list(self._nameFilters)

    def setNameFilters(self, nameFilters):
        self._nameFilters = list(nameFilters)
        self._updateFilter()

    nameFilters = Property("QStringList", _getNameFilters, setNameFilters)

    def _getLabel(self):
        return self._label

    def setLabel(self, label):
        self._label = label

    label = Property(str, _getLabel, setLabel)

    def _getSettingKey(self):
        return self._settingKey

    def setSettingKey(self, key):
        self._settingKey = key

    settingKey = Property(str, _getSettingKey, setSettingKey)

    def _getShowBrowseButton(self):
        return not self._browseButton.isHidden()

    def setShowBrowseButton(self, visible):
        self._browseButton.setVisible(visible)

    showBrowseButton = Property(bool, _getShowBrowseButton, setShowBrowseButton)

    def _getShowHistoryButton(self):
        return self._historyVisible

    def setShowHistoryButton(self, visible):
        self._historyVisible = visible

    showHistoryButton = Property(bool, _getShowHistoryButton, setShowHistoryButton)

    def comboBox(self):
        return self._comboBox

    def _updateFilter(self):
        """ctkPathLineEditPrivate::updateFilter: only the validator changes; nothing is emitted."""
        self._validator.setRegularExpression(QRegularExpression(_nameFiltersPattern(self._nameFilters)))

    def _updateHasValidInput(self, *unused):
        """ctkPathLineEdit::updateHasValidInput, run on every change of the line edit's text."""
        wasValid = self._hasValidInput
        self._hasValidInput = QLineEdit.hasAcceptableInput(self._lineEdit())
        if self._hasValidInput:
            self.currentPathChanged.emit(self._getCurrentPath())
        if self._hasValidInput != wasValid:
            self.validInputChanged.emit(self._hasValidInput)

    def browse(self):
        """Open the file or directory dialog that ``filters`` and ``options`` select (modal)."""
        start = self._getCurrentPath()
        options = QFileDialog.Option(self._options)
        if self._filters & self.Files:
            nameFilters = ";;".join(self._nameFilters)
            if self._filters & self.Writable:
                path = QFileDialog.getSaveFileName(self, "Select a file to save ", start, nameFilters, options=options)
            else:
                path = QFileDialog.getOpenFileName(self, "Open a file", start, nameFilters, options=options)
            path = path[0]
        else:
            path = QFileDialog.getExistingDirectory(self, "Select a directory...", start, options=options)
        if path:
            self.setCurrentPath(path)


class ctkMessageBox(QMessageBox):
    """A message box with a "Don't show again" check box (CTK ``ctkMessageBox``); Slicer's
    ``slicer.util.messageBox`` uses it.

    As in CTK, when ``dontShowAgainSettingsKey`` names a setting that holds a button (the user ticked
    "Don't show again" earlier), ``exec()`` returns that button without waiting.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self._dontShowAgain = False
        self._dontShowAgainVisible = False
        self._dontShowAgainSettingsKey = ""

    def _getDontShowAgain(self):
        return self._dontShowAgain

    def setDontShowAgain(self, dontShow):
        self._dontShowAgain = bool(dontShow)

    dontShowAgain = Property(bool, _getDontShowAgain, setDontShowAgain)

    def _isDontShowAgainVisible(self):
        return self._dontShowAgainVisible

    def setDontShowAgainVisible(self, visible):
        self._dontShowAgainVisible = bool(visible)

    dontShowAgainVisible = Property(bool, _isDontShowAgainVisible, setDontShowAgainVisible)

    def _getDontShowAgainSettingsKey(self):
        return self._dontShowAgainSettingsKey

    def setDontShowAgainSettingsKey(self, key):
        self._dontShowAgainSettingsKey = key
        self._dontShowAgainVisible = bool(key)

    dontShowAgainSettingsKey = Property(str, _getDontShowAgainSettingsKey, setDontShowAgainSettingsKey)

    def _storedButton(self):
        if not self._dontShowAgainSettingsKey:
            return None
        stored = int(QSettings().value(self._dontShowAgainSettingsKey, -1))  # QMessageBox::InvalidRole
        return stored if stored != -1 else None

    def exec(self):
        stored = self._storedButton()
        return stored if stored is not None else QMessageBox.exec(self)

    exec_ = exec


def _spinBoxProperty(name, synchronize=False):
    """Getter and setter of a ctkSliderWidget property kept by its spin box, as CTK forwards them."""
    setterName = "set" + name[0].upper() + name[1:]

    def getter(self):
        return getattr(self._spinBox, name)

    def setter(self, value):
        getattr(self._spinBox, setterName)(value)
        if synchronize:
            self._synchronizeSlider()

    return getter, setter


class ctkSliderWidget(QWidget):
    """A slider with a spin box for a ``double`` value (CTK ``ctkSliderWidget``).

    ``valueChanged(double)`` is emitted when the value changes; ``valueIsChanging(double)``
    while the slider is dragged.
    """

    valueChanged = Signal(float)
    valueIsChanging = Signal(float)
    decimalsChanged = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._spinBox = QDoubleSpinBox(self)
        self._slider = QSlider(Qt.Horizontal, self)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._slider)
        layout.addWidget(self._spinBox)
        self._spinBox.setRange(0.0, 99.0)
        self._spinBox.setSingleStep(1.0)
        self._spinBox.setDecimals(2)
        self._synchronizeSlider()
        self._spinBox.valueChanged.connect(self._onSpinBoxValueChanged)
        self._slider.valueChanged.connect(self._onSliderValueChanged)

    def _toSlider(self, value):
        return round((value - self._spinBox.minimum) / self._spinBox.singleStep)

    def _synchronizeSlider(self):
        self._slider.blockSignals(True)
        self._slider.setRange(0, self._toSlider(self._spinBox.maximum))
        self._slider.setValue(self._toSlider(self._spinBox.value))
        self._slider.blockSignals(False)

    def _onSpinBoxValueChanged(self, value):
        self._synchronizeSlider()
        self.valueChanged.emit(value)

    def _onSliderValueChanged(self, position):
        value = self._spinBox.minimum + position * self._spinBox.singleStep
        if self._slider.isSliderDown():
            self.valueIsChanging.emit(value)
        self._spinBox.setValue(value)

    value = Property(float, *_spinBoxProperty("value"))
    minimum = Property(float, *_spinBoxProperty("minimum", synchronize=True))
    maximum = Property(float, *_spinBoxProperty("maximum", synchronize=True))
    singleStep = Property(float, *_spinBoxProperty("singleStep", synchronize=True))
    prefix = Property(str, *_spinBoxProperty("prefix"))
    suffix = Property(str, *_spinBoxProperty("suffix"))
    setValue = value.fset
    setMinimum = minimum.fset
    setMaximum = maximum.fset
    setSingleStep = singleStep.fset
    setPrefix = prefix.fset
    setSuffix = suffix.fset

    def setRange(self, minimum, maximum):
        self._spinBox.setRange(minimum, maximum)
        self._synchronizeSlider()

    def _getPageStep(self):
        return self._slider.pageStep * self._spinBox.singleStep

    def setPageStep(self, step):
        self._slider.setPageStep(max(1, round(step / self._spinBox.singleStep)))

    pageStep = Property(float, _getPageStep, setPageStep)

    def _getDecimals(self):
        return self._spinBox.decimals

    def setDecimals(self, decimals):
        if decimals != self._spinBox.decimals:
            self._spinBox.setDecimals(decimals)
            self.decimalsChanged.emit(decimals)

    decimals = Property(int, _getDecimals, setDecimals, notify=decimalsChanged)

    def hasTracking(self):
        return self._slider.hasTracking()

    def setTracking(self, enable):
        self._slider.setTracking(enable)

    tracking = Property(bool, hasTracking, setTracking)

    def reset(self):
        self.setValue(self._spinBox.minimum)


class ctkSearchBox(QLineEdit):
    """A line edit for search text (CTK ``ctkSearchBox``): a clear button and a placeholder."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._showSearchIcon = False
        self.setClearButtonEnabled(True)
        self.setPlaceholderText("Search...")

    def _getShowSearchIcon(self):
        return self._showSearchIcon

    def setShowSearchIcon(self, show):
        self._showSearchIcon = show

    showSearchIcon = Property(bool, _getShowSearchIcon, setShowSearchIcon)


class ctkComboBox(QComboBox):
    """A combo box with a ``defaultText`` shown while no item is current (CTK ``ctkComboBox``).

    ``forceDefault`` is stored but, unlike CTK, does not replace the current item's text.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self._forceDefault = False

    def _getDefaultText(self):
        return self.placeholderText

    def setDefaultText(self, text):
        self.setPlaceholderText(text)

    defaultText = Property(str, _getDefaultText, setDefaultText)

    def isDefaultForced(self):
        return self._forceDefault

    def _setForceDefault(self, force):
        self._forceDefault = force

    forceDefault = Property(bool, isDefaultForced, _setForceDefault)


class ctkWidgetsUtils:
    """``ctk.ctkWidgetsUtils.grabWidget(widget[, rect])``: render a widget into a QImage."""

    @staticmethod
    def grabWidget(widget, rect=None):
        pixmap = widget.grab(rect) if rect is not None else widget.grab()
        return pixmap.toImage()
