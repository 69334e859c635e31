"""De-identification of what :func:`dicomxr.convert` writes (PS3.15 Annex E basic profile).

The kept library is **dicognito** (PyPI ``dicognito``), chosen over ``deid`` because:

- its only dependency is pydicom (deid also pulls matplotlib and python-dateutil);
- it is driven from Python (``Anonymizer.anonymize(dataset)``, ``add_element_handler``),
  where deid is driven by recipe files;
- it *replaces* identifiers with values derived from a keyed hash (``seed=``): every UID
  (SOP instance, series, study, frame of reference and every reference to them) maps to the
  same new UID wherever it appears, in one run and in a resumed run with the same key, so a
  cohort stays linked. deid's default recipe removes UIDs and dates instead of remapping them;
- dates move back by one secret offset, so intervals within a cohort are kept.

dicognito replaces names (PN), IDs, UIDs, institution and station, and shifts dates; the
basic profile also removes descriptions, comments, device serial numbers, patient
characteristics and private attributes, which dicognito keeps: :class:`Deidentifier` adds a
handler that removes those (``BASIC_PROFILE_REMOVE``, and every private element).

What dicomxr writes besides DICOM (attrs and coordinates of a Zarr group, the NIfTI header,
the JSON sidecar, the manifest) is de-identified by *allowing* known technical attributes
only (:data:`KEEP`): UIDs pass through the same dicognito remap, dates through the same
shift, everything else named after a DICOM keyword is dropped, and so are the ``path``
coordinate and the series label (a description).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import xarray as xr

from dicomxr.errors import require

__all__ = ["BASIC_PROFILE_REMOVE", "KEEP", "Deidentifier"]

#: basic-profile attributes dicognito keeps; removed (with every private element) on top of it
BASIC_PROFILE_REMOVE = (
    "AcquisitionComments",
    "AcquisitionDeviceProcessingDescription",
    "AcquisitionProtocolDescription",
    "ActualHumanPerformersSequence",
    "AdditionalPatientHistory",
    "AdmissionID",
    "AdmittingDiagnosesCodeSequence",
    "AdmittingDiagnosesDescription",
    "Allergies",
    "Arbitrary",
    "AuthorObserverSequence",
    "CommentsOnThePerformedProcedureStep",
    "ContentCreatorIdentificationCodeSequence",
    "ContributionDescription",
    "CurrentPatientLocation",
    "CustodialOrganizationSequence",
    "DerivationDescription",
    "DeviceSerialNumber",
    "DeviceUID",
    "DischargeDiagnosisDescription",
    "FrameComments",
    "GantryID",
    "IconImageSequence",
    "IdentifyingComments",
    "ImageComments",
    "ImagePresentationComments",
    "ImagingServiceRequestComments",
    "InterpretationRecorder",
    "MedicalAlerts",
    "ModifiedAttributesSequence",
    "OriginalAttributesSequence",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientComments",
    "PatientSex",
    "PatientSexNeutered",
    "PatientSize",
    "PatientState",
    "PatientTransportArrangements",
    "PatientWeight",
    "PerformedProcedureStepDescription",
    "PerformedProtocolCodeSequence",
    "PerformingPhysicianIdentificationSequence",
    "PhysiciansOfRecordIdentificationSequence",
    "PhysiciansReadingStudyIdentificationSequence",
    "PlateID",
    "PreMedication",
    "PregnancyStatus",
    "ProtocolName",
    "ReasonForStudy",
    "ReferencedPatientSequence",
    "ReferencedPerformedProcedureStepSequence",
    "ReferencedStudySequence",
    "ReferringPhysicianIdentificationSequence",
    "RequestAttributesSequence",
    "RequestedContrastAgent",
    "RequestedProcedureComments",
    "RequestedProcedureDescription",
    "ResultsComments",
    "ScheduledProcedureStepDescription",
    "SeriesDescription",
    "SmokingStatus",
    "SoftwareVersions",
    "SpecialNeeds",
    "StudyComments",
    "StudyDescription",
    "TextComments",
    "TopicAuthor",
    "TopicKeywords",
    "TopicSubject",
    "TopicTitle",
    "VisitComments",
)

#: attrs and coordinates (DICOM keywords) that describe the acquisition, not the patient
KEEP = frozenset(
    {
        "AcquisitionNumber",
        "BitsAllocated",
        "BitsStored",
        "ComplexImageComponent",
        "DiffusionBValue",
        "DiffusionDirectionality",
        "DiffusionGradientOrientation",
        "EchoNumbers",
        "EchoTime",
        "FlipAngle",
        "FrameType",
        "GantryDetectorTilt",
        "ImageOrientationPatient",
        "ImageType",
        "InStackPositionNumber",
        "InstanceNumber",
        "InversionTime",
        "LabelType",
        "MagneticFieldStrength",
        "Manufacturer",
        "ManufacturerModelName",
        "Modality",
        "NumberOfTemporalPositions",
        "PatientPosition",
        "PhotometricInterpretation",
        "PixelRepresentation",
        "PixelSpacing",
        "RepetitionTime",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "SeriesNumber",
        "SliceLocation",
        "SliceThickness",
        "SpacingBetweenSlices",
        "StackID",
        "TemporalPositionIdentifier",
        "TemporalPositionIndex",
        "TriggerTime",
        "VOILUTFunction",
        "WindowCenter",
        "WindowCenterWidthExplanation",
        "WindowWidth",
    }
)

#: dicomxr's own attrs and coordinates (not DICOM keywords) that carry no identifier
# the intensity scaling (dicomxr.scaling): its name, factors and units carry no identifier
_SCALING_SAFE = (
    "scaling", "scaling_requested", "scaling_note", "scale_slope", "scale_intercept",
    "PhilipsScaleSlope", "RealWorldValueSlope", "RealWorldValueIntercept", "units_meaning",
    "real_world_units", "real_world_lut", "real_world_other_units",
)  # fmt: skip
_OWN_SAFE = frozenset(
    {"affine", "geometry", "dim_sources", "units", "frame", "tile", "row", "col", "slice"}
) | frozenset(_SCALING_SAFE)
_OWN_SAFE_PREFIXES = ("position_", "bvec_")
_DROP_ALWAYS = frozenset({"path", "series_label", "set_apart"})
_UID = re.compile(r"\d+(?:\.\d+){2,}")


def _vr(keyword: str) -> str | None:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    return None if tag is None else str(dictionary_VR(tag))


def _is_remapped_uid(keyword: str) -> bool:
    return (
        _vr(keyword) == "UI"
        and not keyword.endswith("ClassUID")
        and keyword not in ("TransferSyntaxUID",)
    )


def _basic_profile_handler() -> Any:
    """Return a dicognito element handler removing what the basic profile removes on top."""
    from dicognito.element_anonymizer import ElementAnonymizer
    from pydicom.datadict import tag_for_keyword

    tags = frozenset(tag_for_keyword(k) for k in BASIC_PROFILE_REMOVE) - {None}

    class BasicProfileRemover(ElementAnonymizer):
        """Remove private elements and the basic-profile attributes dicognito keeps."""

        def __call__(self, dataset: Any, data_element: Any) -> bool:
            if data_element.tag.is_private or data_element.tag in tags:
                del dataset[data_element.tag]
                return True
            return False

        def describe_actions(self) -> Iterator[str]:
            yield "Remove private elements"
            yield from (f"Remove {k}" for k in BASIC_PROFILE_REMOVE)

    return BasicProfileRemover()


class Deidentifier:
    """Apply the basic profile with dicognito, keyed so that a cohort stays linked.

    Parameters
    ----------
    secret
        The key of dicognito's hash: the same secret maps the same UID, ID or name to the
        same replacement (keep it private: it lets anyone redo the mapping).
    date_shift
        Move every date back by this many days; ``None`` lets dicognito draw the offset
        (62 to 730 days) from the secret.
    """

    def __init__(self, secret: str, *, date_shift: int | None = None) -> None:
        require("dicognito", extra="convert", purpose="de-identification")
        from dicognito.anonymizer import Anonymizer

        self._anonymizer = Anonymizer(seed=secret)
        if date_shift is not None:
            from dicognito.datetimeanonymizer import DateTimeAnonymizer

            self._anonymizer.add_element_handler(DateTimeAnonymizer(-int(date_shift) * 24))
        self._anonymizer.add_element_handler(_basic_profile_handler())
        self._values: dict[tuple[str, str], str | None] = {}

    # -- DICOM datasets ------------------------------------------------------------------
    def dataset(self, ds: Any) -> Any:
        """De-identify a pydicom dataset in place and return it."""
        from pydicom.dataset import FileMetaDataset

        if not hasattr(ds, "file_meta") or ds.file_meta is None:
            ds.file_meta = FileMetaDataset()
        self._anonymizer.anonymize(ds)
        return ds

    def value(self, keyword: str, value: Any) -> str | None:
        """Return the replacement of one value of ``keyword``; ``None`` when it is removed."""
        from pydicom.dataset import Dataset

        text = str(value)
        key = (keyword, text)
        if key not in self._values:
            ds = Dataset()
            try:
                setattr(ds, keyword, text)
            except (TypeError, ValueError):
                self._values[key] = None
                return None
            self.dataset(ds)
            new = ds.get(keyword)
            self._values[key] = None if new is None else str(new)
        return self._values[key]

    def uid(self, uid: str) -> str:
        """Return the replacement of a UID (the same for every attribute that holds it)."""
        return self.value("SOPInstanceUID", uid) or ""

    def uids_in(self, text: str) -> str:
        """Replace every UID-looking part of ``text`` (e.g. a series key ``<uid>/2``)."""
        return _UID.sub(lambda m: self.uid(m.group(0)), text)

    # -- what dicomxr writes ---------------------------------------------------------------
    def attr(self, name: str, value: Any) -> Any:
        """De-identified attr or coordinate value, or ``None`` when it must not be written."""
        if name in _DROP_ALWAYS:
            return None
        if name in _OWN_SAFE or name in KEEP:
            return value
        if name == "series_key":
            return self.uids_in(str(value))
        keyword = name.removeprefix("volume_")
        vr = _vr(keyword)
        if vr is None:  # dicomxr's own names: geometry kept, anything unknown left out
            return value if name.startswith(_OWN_SAFE_PREFIXES) else None
        if keyword in KEEP:
            return value
        if vr == "UI" and _is_remapped_uid(keyword):
            return self._map_array(keyword, value)
        if vr in ("DA", "DT"):
            return self._map_array(keyword, value)
        if keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID":
            return value
        return None

    def _map_array(self, keyword: str, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            mapped = [self.value(keyword, v) if str(v) else "" for v in value.ravel().tolist()]
            if any(m is None for m in mapped):
                return None
            return np.array(mapped, dtype=object).reshape(value.shape).astype(str)
        if isinstance(value, (list, tuple)):
            mapped = [self.value(keyword, v) for v in value]
            return None if any(m is None for m in mapped) else mapped
        return self.value(keyword, value)

    def array(self, da: xr.DataArray) -> xr.DataArray:
        """Return ``da`` with de-identified attrs and coordinates (pixels untouched)."""
        attrs = {}
        for name, value in da.attrs.items():
            new = self.attr(name, value)
            if new is not None:
                attrs[name] = new
        drop, replace = [], {}
        for name, coord in da.coords.items():
            if name in da.dims:  # dimension coordinates: positions, levels, index values
                continue
            new = self.attr(str(name), coord.values)
            if new is None:
                drop.append(name)
            elif new is not coord.values:
                replace[name] = (coord.dims, np.asarray(new), coord.attrs)
        out = da.drop_vars(drop).assign_coords(replace)
        out.attrs = attrs
        return out
