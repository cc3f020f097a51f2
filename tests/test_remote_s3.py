"""s3://bucket/key: requests signed with AWS Signature Version 4 by libcurl, checked by the
tests' loopback server (tests/remote_server.py, S3 mode: it recomputes each request's signature
from AWS's specification and refuses a wrong one), with the endpoint override an S3-compatible
store needs; credentials from the environment (with a session token), the shared credentials
file or the config file (a named profile), in the AWS CLI's order, and the region and endpoint
from the config file unless a variable names them; anonymous requests for a public bucket; pixels equal the local file's;
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
       "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_REGION",
       "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture
def s3(monkeypatch, tmp_path):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-such-file"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-config"))
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


def test_config_file_region_and_profile_sections(s3, monkeypatch, tmp_path):
    # The region comes from the config file's profile when no variable names one; the config
    # file's sections are [default] and [profile NAME] (a bare [NAME] there is not a profile).
    s3.s3_mode("AKIDCONF", "conf-secret", "ap-south-2")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDCONF")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "conf-secret")
    conf = tmp_path / "config"
    conf.write_text("[default]\nregion = eu-north-1\n\n[training]\nregion = ap-south-2\n\n"
                    "[profile training]\n# a comment\nregion = ap-south-2\n"
                    "s3 =\n  region = us-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(conf))
    st, msg, _ = T.open_status(URL)  # the default profile's region: the server's is another
    assert st == T.E_IO and "AuthorizationHeaderMalformed" in msg, msg
    monkeypatch.setenv("AWS_PROFILE", "training")
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    with T.open_slide(PATH) as ref, slide:
        assert remote_compare.compare_ctypes(ref, slide, regions=2, patches=6) > 0
    # a variable's region wins over the file's, AWS_REGION over AWS_DEFAULT_REGION
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    st, msg, _ = T.open_status(URL)
    assert st == T.E_IO and "AuthorizationHeaderMalformed" in msg, msg
    monkeypatch.setenv("AWS_REGION", "ap-south-2")
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    slide.close()


def test_credentials_precedence_environment_then_credentials_then_config(s3, monkeypatch,
                                                                          tmp_path):
    s3.s3_mode("AKIDRIGHT", "right-secret", "eu-west-3", token="tok-right")
    conf = tmp_path / "config"
    creds = tmp_path / "credentials"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(conf))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "lab")
    # credentials in the config file's profile only
    conf.write_text("[profile lab]\naws_access_key_id = AKIDRIGHT\n"
                    "aws_secret_access_key = right-secret\naws_session_token = tok-right\n")
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    slide.close()
    assert s3.signed > 0
    # the credentials file's profile wins over the config file's
    creds.write_text("[lab]\naws_access_key_id = AKIDCREDS\naws_secret_access_key = x\n")
    st, msg, _ = T.open_status(URL)
    assert st == T.E_IO and "InvalidAccessKeyId" in msg, msg
    # and the environment's over both
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDRIGHT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "right-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok-right")
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    slide.close()
    # a profile whose credentials file section lacks the secret falls through to the config
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    creds.write_text("[lab]\naws_access_key_id = AKIDCREDS\n")
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    slide.close()


def test_default_files_under_home_and_config_endpoint(s3, monkeypatch, tmp_path):
    # With no *_FILE variables, ~/.aws/credentials and ~/.aws/config are read; the config
    # file's endpoint_url is the endpoint when no variable gives one.
    s3.s3_mode("AKIDHOME", "home-secret", "sa-east-1")
    for k in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = AKIDHOME\naws_secret_access_key = home-secret\n")
    (home / ".aws" / "config").write_text(
        "[default]\nregion = sa-east-1\nendpoint_url = %s\n" % s3.base)
    monkeypatch.setenv("HOME", str(home))
    st, msg, slide = T.open_status(URL)
    assert st == T.OK, msg
    with T.open_slide(PATH) as ref, slide:
        assert np.array_equal(ref.read_region(0, 0, 0, 200, 200), slide.read_region(0, 0, 0, 200, 200))
    assert s3.signed == s3.count("bucket/" + KEY) > 0


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
