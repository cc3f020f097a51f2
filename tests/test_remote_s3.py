"""s3://bucket/key: requests signed with AWS Signature Version 4 by libcurl, checked by the
tests' loopback server (tests/remote_server.py, S3 mode: it recomputes each request's signature
from AWS's specification and refuses a wrong one), with the endpoint override an S3-compatible
store needs; credentials from the environment (with a session token) or the shared credentials
file (a named profile); anonymous requests for a public bucket; pixels equal the local file's;
failures name the s3:// URL and S3's reason."""

import json
import os
import pickle
import subprocess

import numpy as np
import pytest

import remote_compare
import tessera_ctypes as T
import wsi_fixtures
from remote_server import SlideServer

NAME = "aperio-jpeg-CMU-1-Small-Region.svs"
PATH = os.path.join(wsi_fixtures.TESTDATA, NAME)
KEY = "slides/case 1/" + NAME  # a space: the key is percent-encoded, and signed so
URL = "s3://bucket/" + KEY
ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
       "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
       "AWS_ENDPOINT_URL_S3")


@pytest.fixture
def s3(monkeypatch, tmp_path):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-file"))
    with SlideServer() as server:
        with open(PATH, "rb") as f:
            server.add("bucket/" + KEY, f.read())
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.base)
        monkeypatch.setenv("AWS_REGION", "eu-west-3")
        yield server


def test_signed_with_environment_credentials_and_session_token(s3, monkeypatch):
    s3.s3_mode("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY", "eu-west-3", token="session-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-1")
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    with T.open_slide(PATH) as ref, slide:
        assert remote_compare.compare_ctypes(ref, slide, regions=3, patches=12) > 0
    assert s3.signed == s3.count("bucket/" + KEY) > 0  # every request was signed, and right


@pytest.mark.parametrize("wrong,reason", [("AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch"),
                                          ("AWS_ACCESS_KEY_ID", "InvalidAccessKeyId"),
                                          ("AWS_SESSION_TOKEN", "InvalidToken"),
                                          ("AWS_REGION", "AuthorizationHeaderMalformed")])
def test_wrong_credentials_fail_naming_the_url(s3, monkeypatch, wrong, reason):
    s3.s3_mode("AKID", "secret", "eu-west-3", token="tok")
    for k, v in (("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "secret"),
                 ("AWS_SESSION_TOKEN", "tok")):
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(wrong, "other")
    st, msg, _ = T.open_status(URL)
    assert st == T.E_IO and URL in msg and "403" in msg and reason in msg, msg
    assert "secret" not in msg


def test_credentials_file_profile(s3, monkeypatch, tmp_path):
    s3.s3_mode("AKIDFILE", "file-secret", "eu-west-3")
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n"
                     "[training]\naws_access_key_id = AKIDFILE\n"
                     "aws_secret_access_key = file-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    st, msg, _ = T.open_status(URL)
    assert st == T.E_IO and "InvalidAccessKeyId" in msg, msg  # the default profile's
    monkeypatch.setenv("AWS_PROFILE", "training")
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    slide.close()


def test_anonymous_for_a_public_bucket(s3):
    s3.s3_mode("AKID", "secret", "eu-west-3", anonymous=True)
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    with T.open_slide(PATH) as ref, slide:
        assert np.array_equal(ref.read_region(0, 0, 0, 300, 300), slide.read_region(0, 0, 0, 300, 300))
    assert s3.signed == 0
    s3.s3_mode("AKID", "secret", "eu-west-3", anonymous=False)
    st, msg, _ = T.open_status(URL)
    assert st == T.E_IO and "AccessDenied" in msg and URL in msg, msg


def test_malformed_s3_urls(s3):
    for bad in ("s3://bucket", "s3://bucket/", "s3:///key"):
        st, msg, _ = T.open_status(bad)
        assert st == T.E_ARGUMENT and "s3://BUCKET/KEY" in msg, (bad, msg)


def test_python_and_cli_take_s3_urls(s3, monkeypatch, cli):
    import tessera
    s3.s3_mode("AKID", "secret", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    img = tessera.CuImage(URL)
    assert img.path == URL
    want = np.asarray(tessera.CuImage(PATH).read_region((100, 100), (256, 256), 0))
    assert np.array_equal(np.asarray(img.read_region((100, 100), (256, 256), 0)), want)
    copy = pickle.loads(pickle.dumps(img))
    assert copy.path == URL
    r = subprocess.run([cli, "info", URL, "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vendor"] == "aperio"
