"""Authentication and authorization over real HTTP: the route × credential matrix, signed
image URLs, the viewer URL's study-scoped token, external JWTs, and the loopback-only
default."""

import time
import uuid

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

import authtools
from authtools import KEYS, bearer
from dicomgen import ct_series, to_bytes
from pacs import multipart, stow_content_type


@pytest.fixture
def secured(make_pacs):
    pacs = make_pacs(authtools.env())
    a = ct_series(n=2)
    b = ct_series(n=1, patient_id="OTHER")
    r = pacs.stow(a + b, headers=bearer(KEYS["uploader"]))
    assert r.status_code == 200, r.text
    return pacs, a, b


def credentials(a_uid, b_uid):
    return {
        "none": None,
        "viewer": KEYS["viewer"],
        "uploader": KEYS["uploader"],
        "admin": KEYS["admin"],
        "study-token": authtools.study_token(a_uid),
        "other-study-token": authtools.study_token(b_uid),
        "expired": authtools.study_token(a_uid, exp_in=-10),
        "tampered": authtools.tamper(authtools.study_token(a_uid)),
    }


def test_authorization_matrix(secured):
    pacs, a, b = secured
    A, B = str(a[0].StudyInstanceUID), str(b[0].StudyInstanceUID)
    AS, AI = str(a[0].SeriesInstanceUID), str(a[0].SOPInstanceUID)
    new = ct_series(n=1)[0]
    body, boundary = multipart([to_bytes(new)])
    stow_ct = stow_content_type(boundary)
    # The internal id of an image of study A (the API gives it to any reader of A).
    images = requests.get(f"{pacs.url}/api/v1/radiology/studies/{A}/images/", headers=bearer(KEYS["viewer"])).json()
    image_id = images["series"][0]["images"][0]["id"]
    read_a = {"none": 401, "viewer": 200, "uploader": 200, "admin": 200, "study-token": 200,
              "other-study-token": 403, "expired": 401, "tampered": 401}
    read_b = dict(read_a, **{"study-token": 403, "other-study-token": 200})
    search = dict(read_a, **{"other-study-token": 200})  # allowed, but narrowed to its own study
    write = {"none": 401, "viewer": 403, "uploader": 200, "admin": 200, "study-token": 403,
             "other-study-token": 403, "expired": 401, "tampered": 401}
    api = "/api/v1/radiology"
    routes = [
        ("GET", "/dicom-web/studies", None, None, search),
        ("GET", f"/dicom-web/studies?StudyInstanceUID={B}", None, None, search),
        ("GET", f"/dicom-web/studies/{A}/series", None, None, read_a),
        ("GET", f"/dicom-web/studies/{A}/metadata", None, None, read_a),
        ("GET", f"/dicom-web/studies/{A}/series/{AS}/instances/{AI}/frames/1", None, None, read_a),
        ("GET", f"/dicom-web/studies/{A}/series/{AS}/instances/{AI}/rendered", None, None, read_a),
        ("GET", f"/dicom-web/studies/{B}/metadata", None, None, read_b),
        ("POST", "/dicom-web/studies", body, stow_ct, write),
        ("GET", f"/api/v1/radiology/studies/{A}/images/", None, None, read_a),
        ("GET", f"/api/v1/radiology/studies/{B}/images", None, None, read_b),
        ("GET", f"/api/v1/radiology/studies/{A}/viewer-url/", None, None, read_a),
        ("GET", f"/api/v1/radiology/images/{image_id}/url/?format=jpeg", None, None, read_a),
        ("GET", f"/api/v1/radiology/images/{image_id}/file?format=dicom", None, None, read_a),
        ("GET", "/viewer", None, None, dict(read_a, **{"other-study-token": 200})),
        ("GET", "/app-config.js", None, None, dict(read_a, **{"other-study-token": 200})),
        ("POST", f"{api}/offline-images/upload-metadata/", b"{}", "application/json", dict(write, uploader=400, admin=400)),
        ("POST", f"{api}/offline-images/upload-binary/", b"x", "application/octet-stream",
         dict(write, uploader=415, admin=415)),
        ("POST", f"{api}/offline-images/acknowledge/", b"{}", "application/json", dict(write, uploader=400, admin=400)),
        ("GET", f"{api}/offline-images/{uuid.uuid4()}/", None, None, dict(write, uploader=404, admin=404)),
        ("PUT", f"{api}/orders/ORD-M", b'{"patient_id": "X"}', "application/json", dict(write, uploader={200, 201}, admin={200, 201})),
        ("GET", f"{api}/orders/ORD-M/studies/", None, None, dict(read_a, **{"study-token": 403})),
        ("GET", "/api/v1/openapi.json", None, None, dict(read_a, **{"study-token": 403})),
        ("GET", "/dicom-web/changefeed", None, None, dict(read_a, **{"study-token": 403})),
        ("GET", "/metrics", None, None, dict(read_a, **{"study-token": 403})),
        ("GET", "/api/v1/admin/audit", None, None, dict(write, uploader=403, admin=200)),
        ("DELETE", f"/dicom-web/studies/{A}", None, None,
         {"none": 401, "viewer": 403, "uploader": 403, "admin": 204, "study-token": 403,
          "other-study-token": 403, "expired": 401, "tampered": 401}),
    ]
    creds = credentials(A, B)
    requests.put(f"{pacs.url}{api}/orders/ORD-M", json={}, headers=bearer(KEYS["admin"]))
    failures = []
    for method, path, data, ctype, expected in routes:
        for who, token in creds.items():
            headers = bearer(token)
            if ctype:
                headers["Content-Type"] = ctype
            if path.startswith("/dicom-web") and method == "GET":
                headers["Accept"] = "*/*"
            r = requests.request(method, pacs.url + path, data=data, headers=headers)
            got = r.status_code
            if got == 404 and path in ("/viewer",):
                got = 200  # the viewer is not installed in every test environment: authorized all the same
            want = expected[who] if isinstance(expected[who], set) else {expected[who]}
            if got not in want:
                failures.append(f"{method} {path} as {who}: {got} (expected {expected[who]}) {r.text[:120]}")
    assert not failures, "\n".join(failures)
    # Health checks need nothing.
    assert requests.get(f"{pacs.url}/healthz").status_code == 200
    assert requests.get(f"{pacs.url}/readyz").status_code == 200


def test_study_token_sees_only_its_study(secured):
    pacs, a, b = secured
    A, B = str(a[0].StudyInstanceUID), str(b[0].StudyInstanceUID)
    r = requests.get(f"{pacs.url}/api/v1/radiology/studies/{A}/viewer-url/", headers=bearer(KEYS["viewer"]))
    assert r.status_code == 200
    info = r.json()
    assert info["study_instance_uid"] == A and f"StudyInstanceUIDs={A}" in info["url"]
    assert info["expires_at"] - time.time() == pytest.approx(3600, abs=30)
    client = DICOMwebClient(f"{pacs.url}/dicom-web", headers=bearer(info["token"]))
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [A]
    assert client.search_for_studies(search_filters={"StudyInstanceUID": B}) == []
    assert len(client.search_for_instances()) == 2
    assert len(client.retrieve_study(A)) == 2
    with pytest.raises(requests.HTTPError) as e:
        client.retrieve_study(B)
    assert e.value.response.status_code == 403
    # Read-only whatever happens.
    body, boundary = multipart([to_bytes(ct_series(n=1, study_uid=A)[0])])
    r = pacs.post("/studies", body, stow_content_type(boundary),
                  headers=bearer(info["token"]))
    assert r.status_code == 403
    # The viewer page with the token in its URL sets the cookie its assets load with.
    r = requests.get(f"{pacs.url}/app-config.js?token={info['token']}")
    assert r.status_code == 200 and "pacs_token=" in r.headers.get("Set-Cookie", "")
    r = requests.get(f"{pacs.url}/app-config.js", cookies={"pacs_token": info["token"]})
    assert r.status_code == 200
    # The cookie is not accepted for writes.
    r = requests.post(f"{pacs.dicomweb}/studies", data=body, cookies={"pacs_token": KEYS["uploader"]},
                      headers={"Content-Type": stow_content_type(boundary)})
    assert r.status_code == 401


def test_signed_image_urls(secured):
    pacs, a, b = secured
    A = str(a[0].StudyInstanceUID)
    images = requests.get(f"{pacs.url}/api/v1/radiology/studies/{A}/images/", headers=bearer(KEYS["viewer"])).json()
    series = images["series"]
    assert len(series) == 1 and series[0]["modality"] == "CT" and series[0]["series_number"] == 1
    first = series[0]["images"][0]
    assert first["sop_instance_uid"] == str(a[0].SOPInstanceUID) and first["frames"] == 1
    # The signed URL works without any credentials, and serves the stored bytes.
    r = requests.get(first["url"])
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/dicom"
    assert r.content[128:132] == b"DICM" and r.content == pacs.object_bytes(first["sop_instance_uid"])
    r = requests.get(f"{pacs.url}/api/v1/radiology/images/{first['id']}/url/?format=png", headers=bearer(KEYS["viewer"]))
    png = r.json()
    r = requests.get(png["url"])
    assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
    # Another image, another format, a changed expiry or signature: 403.
    url = png["url"]
    other = url.replace(f"/images/{first['id']}/", f"/images/{first['id'] + 1}/")
    assert requests.get(other).status_code == 403
    assert requests.get(url.replace("format=png", "format=dicom")).status_code == 403
    expires = str(png["expires_at"])
    assert requests.get(url.replace(f"expires={expires}", f"expires={int(expires) + 100}")).status_code == 403
    sig = url.split("signature=")[1]
    assert requests.get(url.replace(sig, sig[:-2] + ("AA" if not sig.endswith("AA") else "BB"))).status_code == 403
    # Expired: a server whose URLs live one second.
    r = requests.get(f"{pacs.url}/api/v1/radiology/images/{first['id']}/url/?format=jpeg", headers=bearer(KEYS["viewer"]))
    assert r.status_code == 200 and requests.get(r.json()["url"]).headers["Content-Type"] == "image/jpeg"


def test_signed_urls_expire(make_pacs):
    pacs = make_pacs(authtools.env(PACS_AUTH__URL_TTL_SECS="1"))
    [ds] = ct_series(n=1)
    pacs.stow([ds], headers=bearer(KEYS["uploader"]))
    images = requests.get(f"{pacs.url}/api/v1/radiology/studies/{ds.StudyInstanceUID}/images/",
                          headers=bearer(KEYS["viewer"])).json()
    url = images["series"][0]["images"][0]["url"]
    assert requests.get(url).status_code == 200
    time.sleep(2.1)
    r = requests.get(url)
    assert r.status_code == 403 and r.json()["error"] == "url_expired"


def test_external_jwts(secured):
    pacs, a, b = secured
    ok = authtools.idp_token(["viewer"])
    assert requests.get(f"{pacs.dicomweb}/studies", headers=bearer(ok)).status_code == 200
    upl = authtools.idp_token("uploader")
    one = [to_bytes(ct_series(n=1)[0])]
    assert pacs.stow(one, headers=bearer(upl)).status_code == 200
    assert pacs.stow(one, headers=bearer(ok)).status_code == 403
    for bad in (authtools.idp_token("viewer", exp_in=-120), authtools.idp_token("viewer", aud="someone-else"),
                authtools.idp_token("viewer", iss="evil"), authtools.idp_token("nobody"),
                authtools.jwt({"iss": "test-idp", "aud": "pacs-lite", "role": "admin", "exp": time.time() + 60},
                              "wrong-secret")):
        assert requests.get(f"{pacs.dicomweb}/studies", headers=bearer(bad)).status_code == 401


def test_without_credentials_only_loopback(pacs):
    # The embedded default: no credentials needed on loopback (and non-loopback listening is refused).
    assert requests.get(f"{pacs.dicomweb}/studies").status_code == 200
    assert requests.get(f"{pacs.url}/api/v1/radiology/studies/1/images/").status_code == 404


def rsa_identity_provider(tmp_path):
    """An RSA key (openssl), its JWKS, and a function that signs RS256 JWTs with it."""
    import base64
    import json as _json
    import subprocess
    key = tmp_path / "idp.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key],
                   check=True, capture_output=True)
    modulus = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"], check=True, capture_output=True,
                             text=True).stdout.strip().split("=", 1)[1]
    n = authtools.b64(bytes.fromhex(modulus))
    jwks = {"keys": [{"kty": "RSA", "kid": "idp-1", "use": "sig", "alg": "RS256", "n": n, "e": "AQAB"}]}

    def sign(claims, kid="idp-1"):
        header = {"alg": "RS256", "typ": "JWT", "kid": kid}
        signing_input = f"{authtools.b64(_json.dumps(header).encode())}.{authtools.b64(_json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input.encode(),
                             check=True, capture_output=True).stdout
        return f"{signing_input}.{authtools.b64(sig)}"
    return jwks, sign


@pytest.mark.parametrize("source", ["file", "url"])
def test_rs256_jwts_from_a_jwks(make_pacs, tmp_path, source):
    import http.server
    import json as _json
    import threading
    jwks, sign = rsa_identity_provider(tmp_path)
    extra = {"PACS_AUTH__JWT__ISSUER": "https://idp.example", "PACS_AUTH__JWT__AUDIENCE": "pacs-lite",
             "PACS_AUTH__JWT__ROLE_CLAIM": "roles"}
    server = None
    if source == "file":
        (tmp_path / "jwks.json").write_text(_json.dumps(jwks))
        extra["PACS_AUTH__JWT__JWKS_FILE"] = str(tmp_path / "jwks.json")
    else:
        body = _json.dumps(jwks).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        extra["PACS_AUTH__JWT__JWKS_URL"] = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    try:
        pacs = make_pacs(extra)
        now = int(time.time())
        good = {"iss": "https://idp.example", "aud": "pacs-lite", "sub": "radiologist", "exp": now + 300,
                "roles": ["viewer"]}
        assert requests.get(f"{pacs.dicomweb}/studies", headers=bearer(sign(good))).status_code == 200
        one = [to_bytes(ct_series(n=1)[0])]
        assert pacs.stow(one, headers=bearer(sign(good))).status_code == 403
        assert pacs.stow(one, headers=bearer(sign(dict(good, roles=["uploader"])))).status_code == 200
        for bad in (sign(dict(good, exp=now - 120)), sign(dict(good, iss="https://evil.example")),
                    sign(dict(good, aud="other")), sign(good, kid="unknown-key"),
                    authtools.tamper(sign(good))):
            assert requests.get(f"{pacs.dicomweb}/studies", headers=bearer(bad)).status_code == 401
    finally:
        if server:
            server.shutdown()
