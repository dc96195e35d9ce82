"""Generate DICOM test data with pydicom: CT series of any size, UTF-8 names, and the
bundled pydicom samples."""

import io

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def ct_series(n=3, size=64, patient_name="Test^Patient", patient_id="P1", study_uid=None,
              series_uid=None, charset="ISO_IR 192", study_date="20240115", modality="CT",
              accession="ACC1", seed=0, series_number=1, study_description="Generated study",
              series_description="Generated series", extra=None):
    """A list of n CT instances of one series (one study)."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = charset
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = study_date
        ds.StudyTime = "101500"
        ds.AccessionNumber = accession
        ds.StudyID = "1"
        ds.StudyDescription = study_description
        ds.ReferringPhysicianName = "Ref^Doc"
        ds.Modality = modality
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1.0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
        if extra:
            extra(ds)
        out.append(ds)
    return out


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def sample(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def sample_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def multiframe(frames=4, size=48, seed=9):
    """A 16-bit grayscale multi-frame secondary capture whose frames all differ."""
    ds = ct_series(n=1, size=size, seed=seed)[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    ds.Modality = "OT"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 40
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    ds.PixelData = np.stack([(base + 500 * i) % 4096 for i in range(frames)]).astype(np.uint16).tobytes()
    return ds
