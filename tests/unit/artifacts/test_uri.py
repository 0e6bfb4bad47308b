"""Every accepted URI form parses; every malformed one names the field and shows the fix."""

from __future__ import annotations

import pytest

from modelfleet.artifacts.uri import ArtifactUri, parse_artifact_uri, pvc_mount

FIELD = "spec.models[0].uri"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "file:///data/models/tiny",
            ArtifactUri("file:///data/models/tiny", "file", path="/data/models/tiny"),
        ),
        (
            "file:///data/models/tiny/",
            ArtifactUri("file:///data/models/tiny/", "file", path="/data/models/tiny"),
        ),
        (
            "pvc://models/llama/8b",
            ArtifactUri("pvc://models/llama/8b", "pvc", name="models", path="llama/8b"),
        ),
        ("pvc://models", ArtifactUri("pvc://models", "pvc", name="models")),
        ("pvc://models/", ArtifactUri("pvc://models/", "pvc", name="models")),
        (
            "s3://my-bucket/runs/42/model",
            ArtifactUri(
                "s3://my-bucket/runs/42/model", "s3", name="my-bucket", path="runs/42/model"
            ),
        ),
        (
            "s3://my.bucket/model/",
            ArtifactUri("s3://my.bucket/model/", "s3", name="my.bucket", path="model"),
        ),
        (
            "hf://Qwen/Qwen2.5-0.5B",
            ArtifactUri("hf://Qwen/Qwen2.5-0.5B", "hf", name="Qwen/Qwen2.5-0.5B"),
        ),
        ("hf://gpt2", ArtifactUri("hf://gpt2", "hf", name="gpt2")),
        (
            "hf://org/name@v1.0",
            ArtifactUri("hf://org/name@v1.0", "hf", name="org/name", revision="v1.0"),
        ),
        (
            "hf://org/name@refs/pr/1",
            ArtifactUri("hf://org/name@refs/pr/1", "hf", name="org/name", revision="refs/pr/1"),
        ),
        ("zoo://tiny", ArtifactUri("zoo://tiny", "zoo", name="tiny")),
        ("zoo://tiny-chat_2.1", ArtifactUri("zoo://tiny-chat_2.1", "zoo", name="tiny-chat_2.1")),
    ],
)
def test_parses_every_scheme(uri: str, expected: ArtifactUri) -> None:
    assert parse_artifact_uri(uri, FIELD) == expected


@pytest.mark.parametrize(
    ("uri", "fix"),
    [
        ("/data/models/tiny", "file:///<absolute dir>"),
        ("models/tiny", "s3://<bucket>/<key prefix>"),
        ("ftp://host/model", "hf://<org>/<name>[@<revision>]"),
        ("builtin://tiny", "zoo://<name>"),
        ("file://data/models", "file:///data/models/tiny"),
        ("file://", "file:///"),
        ("file:///", "file:///"),
        ("pvc://", "pvc://<claim>/<path>"),
        ("pvc://Models/x", "pvc://<claim>/<path>"),
        ("pvc://models/../etc", "a plain path inside the claim"),
        ("pvc://models/a//b", "a plain path inside the claim"),
        ("s3://", "s3://<bucket>/<key prefix>"),
        ("s3://ab/model", "s3://<bucket>/<key prefix>"),
        ("s3://My_Bucket/model", "s3://<bucket>/<key prefix>"),
        ("s3://bucket", "s3://<bucket>/<key prefix>"),
        ("s3://bucket/", "s3://<bucket>/<key prefix>"),
        ("s3://bucket/a/../b", "s3://<bucket>/<key prefix>"),
        ("hf://", "hf://<org>/<name>"),
        ("hf://a/b/c", "hf://<org>/<name>"),
        ("hf://org/-name", "hf://<org>/<name>"),
        ("hf://org/name@", "after '@'"),
        ("hf://org/name@-x", "after '@'"),
        ("zoo://", "zoo://<name>"),
        ("zoo://a/b", "zoo://<name>"),
        ("s3://bucket/my model", "file:///<absolute dir>"),
    ],
)
def test_rejects_malformed_uris_naming_field_uri_and_fix(uri: str, fix: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_artifact_uri(uri, FIELD)
    message = str(caught.value)
    assert message.startswith(f"{FIELD}: {uri!r} ")
    assert fix in message


def test_pvc_mount_names_the_claim_and_its_mount_path() -> None:
    assert pvc_mount(parse_artifact_uri("pvc://models/llama/8b", FIELD)) == (
        "models",
        "/mnt/pvc/models",
    )


def test_pvc_mount_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match="not a pvc:// URI"):
        pvc_mount(parse_artifact_uri("s3://bucket/model", FIELD))
