"""The OpenAPI document: served by the server, valid OpenAPI 3.1, covering every route of the
REST API, and the server's real answers match its schemas."""

import hashlib
import json
import uuid

import jsonschema
import requests
from openapi_spec_validator import validate

from dicomgen import ct_series, to_bytes
from pacs import ROOT

API = "/api/v1/radiology"


def test_openapi_document(pacs):
    r = requests.get(f"{pacs.url}/api/v1/openapi.json")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    doc = r.json()
    assert doc == json.loads((ROOT / "conformance" / "openapi.json").read_text())
    validate(doc)
    # Every route of the REST API is described (and nothing that does not exist).
    routes = {f"{API}/offline-images/upload-metadata/", f"{API}/offline-images/upload-binary/",
              f"{API}/offline-images/acknowledge/", f"{API}/offline-images/{{image_uuid}}/",
              f"{API}/orders", f"{API}/orders/{{id}}", f"{API}/orders/{{id}}/studies/", f"{API}/studies/{{id}}/viewer-url/",
              f"{API}/studies/{{id}}/images/", f"{API}/images/{{id}}/url/", f"{API}/images/{{id}}/file",
              "/api/v1/openapi.json", "/healthz", "/readyz"}
    assert set(doc["paths"]) == routes

    # Real answers against the schemas.
    def check(answer, path, method, status):
        schema = doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]
        # The schema with the document's components beside it, so that its $refs resolve.
        assert answer.status_code == status, answer.text
        jsonschema.validate(answer.json(), dict(schema, components=doc["components"]),
                            cls=jsonschema.Draft202012Validator)

    [ds] = ct_series(n=1, accession="ACC-OA")
    data = to_bytes(ds)
    check(requests.put(f"{pacs.url}{API}/orders/ORD-OA", json={"accession_number": "ACC-OA", "patient_sex": "F"}),
          f"{API}/orders/{{id}}", "put", 201)
    m = {"image_uuid": str(uuid.uuid4()), "radiology_order_id": "ORD-OA", "filename": "a.dcm", "file_size": len(data),
         "mime_type": "application/dicom", "checksum": hashlib.sha256(data).hexdigest(),
         "image_metadata": {"study_uid": str(ds.StudyInstanceUID), "series_uid": str(ds.SeriesInstanceUID),
                            "image_uid": str(ds.SOPInstanceUID)}}
    check(requests.post(f"{pacs.url}{API}/offline-images/upload-metadata/", json=m),
          f"{API}/offline-images/upload-metadata/", "post", 201)
    check(requests.post(f"{pacs.url}{API}/offline-images/upload-metadata/", json=dict(m, checksum="x")),
          f"{API}/offline-images/upload-metadata/", "post", 400)
    check(requests.post(f"{pacs.url}{API}/offline-images/acknowledge/", json={"image_uuid": m["image_uuid"]}),
          f"{API}/offline-images/acknowledge/", "post", 409)
    check(requests.post(f"{pacs.url}{API}/offline-images/upload-binary/",
                        files=[("image_uuid", (None, m["image_uuid"])), ("file", ("a", data))]),
          f"{API}/offline-images/upload-binary/", "post", 201)
    check(requests.get(f"{pacs.url}{API}/offline-images/{m['image_uuid']}/"), f"{API}/offline-images/{{image_uuid}}/", "get", 200)
    check(requests.post(f"{pacs.url}{API}/offline-images/acknowledge/", json={"image_uuid": m["image_uuid"]}),
          f"{API}/offline-images/acknowledge/", "post", 200)
    check(requests.get(f"{pacs.url}{API}/orders/ORD-OA/studies/"), f"{API}/orders/{{id}}/studies/", "get", 200)
    full = {"accession_number": "ACC-OB", "patient_id": "P-OB", "patient_name": "Doe^Jane", "requested_procedure_id": "RP-OB",
            "referring_physician": "House^Greg", "scheduled_procedure_steps": [
                {"modality": "CT", "station_ae": "CT1", "start": "2026-12-07T10:30", "description": "CT head"}]}
    check(requests.put(f"{pacs.url}{API}/orders/ORD-OB", json=full), f"{API}/orders/{{id}}", "put", 201)
    check(requests.put(f"{pacs.url}{API}/orders/ORD-OB", json=full), f"{API}/orders/{{id}}", "put", 200)
    check(requests.put(f"{pacs.url}{API}/orders/ORD-OB", json=dict(full, status="done")), f"{API}/orders/{{id}}", "put", 400)
    check(requests.get(f"{pacs.url}{API}/orders/ORD-OB"), f"{API}/orders/{{id}}", "get", 200)
    check(requests.get(f"{pacs.url}{API}/orders/NONE"), f"{API}/orders/{{id}}", "get", 404)
    check(requests.get(f"{pacs.url}{API}/orders?date=2026-12-07&modality=CT"), f"{API}/orders", "get", 200)
    check(requests.get(f"{pacs.url}{API}/orders?status=done"), f"{API}/orders", "get", 400)
    study = str(ds.StudyInstanceUID)
    check(requests.get(f"{pacs.url}{API}/studies/{study}/viewer-url/"), f"{API}/studies/{{id}}/viewer-url/", "get", 200)
    images = requests.get(f"{pacs.url}{API}/studies/{study}/images/")
    check(images, f"{API}/studies/{{id}}/images/", "get", 200)
    image_id = images.json()["series"][0]["images"][0]["id"]
    check(requests.get(f"{pacs.url}{API}/images/{image_id}/url/?format=png"), f"{API}/images/{{id}}/url/", "get", 200)
    check(requests.get(f"{pacs.url}{API}/images/{image_id}/url/?format=gif"), f"{API}/images/{{id}}/url/", "get", 400)
