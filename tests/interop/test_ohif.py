"""OHIF, unmodified, in headless Chromium against the real server: the study list shows
the stored studies, and a CT series, a multi-frame series, a JPEG-compressed and a JPEG-LS series
render real pixels, with no failed request and no error notification."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image, ImageStat

import optional
from dicomgen import ct_series, sample

E2E, VIEWER = optional.E2E, optional.VIEWER


def require_ohif():
    missing = optional.ohif_missing()
    if missing:
        if os.environ.get("PACS_TEST_REQUIRE_OHIF"):
            pytest.fail(f"OHIF end-to-end test cannot run: {missing}")
        pytest.skip(missing)


@pytest.fixture
def ohif_pacs(make_pacs):
    require_ohif()
    return make_pacs({"PACS_VIEWER__DIR": str(VIEWER)})


def run_ohif(pacs, out: Path, studies, urls=None, app_config: Path | None = None, extra_env=None):
    env = dict(os.environ)
    env.update(extra_env or {})
    if urls:
        env["OHIF_URLS"] = json.dumps(urls)
    if app_config:
        env["OHIF_APP_CONFIG"] = str(app_config)
    r = subprocess.run(["node", E2E / "ohif.mjs", pacs.url, out, *studies], capture_output=True, text=True,
                       timeout=600, cwd=E2E, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_ohif_lists_and_renders_studies(ohif_pacs, tmp_path):
    pacs = ohif_pacs
    client = DICOMwebClient(pacs.dicomweb)
    ct = ct_series(n=12, size=256, patient_name="Viewer^Computed", patient_id="OHIF-CT")
    client.store_instances(ct)
    dose, jpeg = sample("rtdose.dcm"), sample("SC_rgb_jpeg_dcmtk.dcm")
    jpegls = sample("MR_small_jpeg_ls_lossless.dcm")  # stored JPEG-LS: OHIF decodes it itself
    client.store_instances([dose, jpeg, jpegls])
    studies = {"ct": str(ct[0].StudyInstanceUID), "multiframe": str(dose.StudyInstanceUID),
               "jpeg": str(jpeg.StudyInstanceUID), "jpegls": str(jpegls.StudyInstanceUID)}

    report = run_ohif(pacs, tmp_path, list(studies.values()))
    assert "fatal" not in report, report
    assert report["httpErrors"] == [], report["httpErrors"]
    assert report["notifications"] == [], report["notifications"]
    # The study list shows every study (OHIF formats names "Family, Given").
    for text in ["Viewer, Computed", "ACC1", "Generated study"]:
        assert text in report["list"], report["list"][:2000]
    assert "RTDOSE" in report["list"] and "OT" in report["list"]

    for label, uid in studies.items():
        assert report["studies"][uid]["canvas"], f"{label}: no viewport canvas"
        image = Image.open(tmp_path / f"{uid}.png").convert("RGB")
        stats = ImageStat.Stat(image.convert("L"))
        assert stats.stddev[0] > 10, f"{label}: the viewport is blank (stddev {stats.stddev[0]:.1f})"

    # The JPEG sample is colour bars: the viewport must show saturated red, green and blue.
    colours = Image.open(tmp_path / f"{studies['jpeg']}.png").convert("RGB").getcolors(1 << 20)
    def has(pred):
        return sum(n for n, c in colours if pred(*c)) > 500
    assert has(lambda r, g, b: r > 200 and g < 60 and b < 60), "red bar"
    assert has(lambda r, g, b: g > 200 and r < 60 and b < 60), "green bar"
    assert has(lambda r, g, b: b > 200 and r < 60 and g < 60), "blue bar"


def test_ohif_opens_the_viewer_url_with_its_study_token(make_pacs, tmp_path):
    import requests
    import authtools
    require_ohif()
    pacs = make_pacs(authtools.env(PACS_VIEWER__DIR=str(VIEWER)))
    uploader = authtools.bearer(authtools.KEYS["uploader"])
    mine = ct_series(n=8, size=256, patient_name="Token^Holder", patient_id="TOK-A")
    other = ct_series(n=2, size=64, patient_name="Someone^Else", patient_id="TOK-B")
    DICOMwebClient(pacs.dicomweb, headers=uploader).store_instances(mine + other)
    A, B = str(mine[0].StudyInstanceUID), str(other[0].StudyInstanceUID)
    r = requests.get(f"{pacs.url}/api/v1/radiology/studies/{A}/viewer-url/", headers=authtools.bearer(authtools.KEYS["viewer"]))
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    # The same token, pointed at the other study.
    forged = url.replace(f"StudyInstanceUIDs={A}", f"StudyInstanceUIDs={B}")
    report = run_ohif(pacs, tmp_path, [], urls={"mine": url, "other": forged})
    assert "fatal" not in report, report
    assert report["studies"]["mine"]["canvas"], report
    image = Image.open(tmp_path / "mine.png").convert("L")
    assert ImageStat.Stat(image).stddev[0] > 10, "the viewport is blank"
    assert not report["studies"]["other"]["canvas"], "the token opened another study"
    refused = [e for e in report["httpErrors"] if e.startswith("403") and B in e]
    assert refused, report["httpErrors"]
    assert not [e for e in report["httpErrors"] if A in e], report["httpErrors"]


def test_ohif_over_https_with_http2(make_pacs, tmp_path):
    """OHIF over HTTPS, Chromium trusting the test server's key: HTTP/2 is negotiated and
    carries the images; with HTTP/2 turned off in Chromium, HTTP/1.1 works the same."""
    from tlstools import Pki
    require_ohif()
    pki = Pki(tmp_path / "pki")
    pacs = make_pacs({"PACS_VIEWER__DIR": str(VIEWER), "PACS_HTTP__TLS__CERT_FILE": pki.pem("server"),
                      "PACS_HTTP__TLS__KEY_FILE": pki.key("server")})
    assert pacs.url.startswith("https://")
    session = __import__("requests").Session()
    session.trust_env, session.verify = False, pki.pem("ca")
    ct = ct_series(n=12, size=256, patient_name="Secure^Viewer", patient_id="OHIF-TLS")
    DICOMwebClient(pacs.dicomweb, session=session).store_instances(ct)
    uid = str(ct[0].StudyInstanceUID)
    for http1 in [False, True]:
        out = tmp_path / ("http1" if http1 else "h2")
        out.mkdir()
        env = {"OHIF_SPKI": pki.spki_sha256("server"), **({"OHIF_HTTP1": "1"} if http1 else {})}
        report = run_ohif(pacs, out, [uid], extra_env=env)
        assert "fatal" not in report, report
        assert report["httpErrors"] == [], report["httpErrors"]
        study = report["studies"][uid]
        assert study["canvas"] and study["firstImageMs"], study
        image = Image.open(out / f"{uid}.png").convert("L")
        assert ImageStat.Stat(image).stddev[0] > 10, "the viewport is blank"
        protocols = study["protocols"]
        wanted = "http/1.1" if http1 else "h2"
        assert protocols.get(wanted, 0) >= study["imageRequests"] > 0, study
        assert set(protocols) <= {wanted, "unknown", ""}, protocols


def test_ohif_renders_through_wado_uri(ohif_pacs, tmp_path):
    """The shipped configuration with imageRendering 'wadouri': OHIF loads whole instances
    from /wado (wadoUriRoot) instead of WADO-RS frames, and shows real pixels."""
    import requests
    pacs = ohif_pacs
    ct = ct_series(n=6, size=256, patient_name="Uri^Loaded", patient_id="OHIF-URI")
    jpeg = sample("SC_rgb_jpeg_dcmtk.dcm")
    # As Part-10 files with their meta group length, which Cornerstone's WADO-URI loader
    # requires (dicomweb-client writes data sets without it: fine for WADO-RS, not here).
    assert pacs.stow(ct + [jpeg]).status_code == 200
    config = requests.get(f"{pacs.url}/app-config.js").text
    assert "wadoUriRoot: window.location.origin + '/wado'" in config
    assert config.count("Rendering: 'wadors'") == 2
    path = tmp_path / "app-config.js"
    path.write_text(config.replace("Rendering: 'wadors'", "Rendering: 'wadouri'"))
    studies = {"ct": str(ct[0].StudyInstanceUID), "jpeg": str(jpeg.StudyInstanceUID)}

    report = run_ohif(pacs, tmp_path, list(studies.values()), app_config=path)
    assert "fatal" not in report, report
    assert report["httpErrors"] == [], report["httpErrors"]
    assert report["notifications"] == [], report["notifications"]
    assert report["requests"].get("wado", 0) >= 2, report["requests"]  # one study, then the other
    assert "frames" not in report["requests"], report["requests"]
    for label, uid in studies.items():
        assert report["studies"][uid]["canvas"], f"{label}: no viewport canvas"
        stats = ImageStat.Stat(Image.open(tmp_path / f"{uid}.png").convert("L"))
        assert stats.stddev[0] > 10, f"{label}: the viewport is blank (stddev {stats.stddev[0]:.1f})"
    colours = Image.open(tmp_path / f"{studies['jpeg']}.png").convert("RGB").getcolors(1 << 20)
    assert sum(n for n, (r, g, b) in colours if r > 200 and g < 60 and b < 60) > 500, "red bar"
