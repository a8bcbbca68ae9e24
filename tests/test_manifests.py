"""``orgcast tenants apply``: manifests validated all at once, then created or updated, never
deleted; run as the real console script on SQLite and on PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from orgcast.services.manifests import ManifestError, load_directory, load_manifest
from tests.test_cli import REPO, Cli, make_cli, slugs

ACME = """\
slug = "acme"
name = "Acme Inc"
ephemeral_events = ["typing", "cursor"]
allowed_origins = ["https://app.acme.example"]

[limits]
max_connections = 500
messages_per_second = 10
"""

BETA = """\
slug = "beta"
name = "Beta"
"""


@pytest.fixture(params=["sqlite", "postgres"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    return make_cli(request.param, request, tmp_path)


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def tenant(cli: Cli, slug: str) -> dict[str, Any]:
    body: dict[str, Any] = cli.ok("tenants", "show", slug, "--json").json()
    return body


def test_apply_creates_the_tenants_then_a_second_run_is_unchanged(cli: Cli) -> None:
    manifests = write(cli.cwd / "orgs", {"acme.toml": ACME, "beta.toml": BETA})
    first = cli.ok("tenants", "apply", "orgs")
    assert first.out == "acme: created\nbeta: created\n"
    acme = tenant(cli, "acme")
    assert (acme["name"], acme["status"]) == ("Acme Inc", "active")
    assert acme["limits"] == {"max_connections": 500, "messages_per_second": 10}
    assert acme["ephemeral_events"] == ["cursor", "typing"]
    assert acme["allowed_origins"] == ["https://app.acme.example"]
    assert len(acme["signing_keys"]) == 1 and len(acme["api_keys"]) == 1
    beta = tenant(cli, "beta")
    assert (beta["name"], beta["limits"], beta["ephemeral_events"]) == ("Beta", {}, [])

    assert cli.ok("tenants", "apply", "orgs").out == "acme: unchanged\nbeta: unchanged\n"
    assert cli.ok("tenants", "apply", str(manifests), "--json").json() == {
        "dry_run": False,
        "tenants": [
            {"slug": "acme", "file": f"{manifests}/acme.toml", "action": "unchanged", "fields": []},
            {"slug": "beta", "file": f"{manifests}/beta.toml", "action": "unchanged", "fields": []},
        ],
    }
    assert tenant(cli, "acme")["updated_at"] == acme["updated_at"]


def test_apply_updates_only_the_changed_fields(cli: Cli) -> None:
    write(cli.cwd / "tenants", {"acme.toml": ACME, "beta.toml": BETA})
    cli.ok("tenants", "apply")
    keys = tenant(cli, "acme")["signing_keys"]
    changed = ACME.replace('name = "Acme Inc"', 'name = "Acme Corporation"').replace(
        "max_connections = 500", "max_connections = 600"
    )
    write(cli.cwd / "tenants", {"acme.toml": changed})
    result = cli.ok("tenants", "apply", "--json").json()
    assert [(t["slug"], t["action"], t["fields"]) for t in result["tenants"]] == [
        ("acme", "updated", ["name", "limits"]),
        ("beta", "unchanged", []),
    ]
    acme = tenant(cli, "acme")
    assert acme["name"] == "Acme Corporation"
    assert acme["limits"] == {"max_connections": 600, "messages_per_second": 10}
    assert acme["signing_keys"] == keys  # keys are never touched by apply

    # A key left out means its default: the file is the truth for what it covers.
    write(cli.cwd / "tenants", {"acme.toml": 'slug = "acme"\nname = "Acme Corporation"\n'})
    assert cli.ok("tenants", "apply").out == (
        "acme: updated (limits, ephemeral_events, allowed_origins)\nbeta: unchanged\n"
    )
    acme = tenant(cli, "acme")
    assert (acme["limits"], acme["ephemeral_events"], acme["allowed_origins"]) == ({}, [], [])


def test_apply_never_deletes_and_never_changes_the_status(cli: Cli) -> None:
    write(cli.cwd / "tenants", {"acme.toml": ACME, "beta.toml": BETA})
    cli.ok("tenants", "apply")
    cli.ok("tenants", "suspend", "acme")
    (cli.cwd / "tenants" / "beta.toml").unlink()
    assert cli.ok("tenants", "apply").out == "acme: unchanged\n"
    assert slugs(cli.ok("tenants", "list", "--json")) == ["acme", "beta"]
    assert tenant(cli, "acme")["status"] == "suspended"


def test_apply_dry_run_reports_the_plan_and_changes_nothing(cli: Cli) -> None:
    write(cli.cwd / "tenants", {"acme.toml": ACME})
    cli.ok("tenants", "apply")
    write(cli.cwd / "tenants", {"acme.toml": ACME.replace("Acme Inc", "Acme 2"), "beta.toml": BETA})
    assert cli.ok("tenants", "apply", "--dry-run").out == (
        "acme: would be updated (name)\nbeta: would be created\n"
    )
    planned = cli.ok("tenants", "apply", "--dry-run", "--json").json()
    assert planned["dry_run"] is True
    assert [t["action"] for t in planned["tenants"]] == ["updated", "created"]
    assert slugs(cli.ok("tenants", "list", "--json")) == ["acme"]
    assert tenant(cli, "acme")["name"] == "Acme Inc"


INVALID = [
    ("bad slug", "Bad_Slug.toml", 'slug = "Bad_Slug"\nname = "x"\n', "slug"),
    ("reserved slug", "admin.toml", 'slug = "admin"\nname = "x"\n', "slug"),
    ("unknown field", "gamma.toml", 'slug = "gamma"\nname = "x"\ncolour = "red"\n', "colour"),
    ("unknown limit", "gamma.toml", 'slug = "gamma"\nname = "x"\n[limits]\nmax_users = 3\n', "limits.max_users"),  # noqa: E501
    ("bad limit", "gamma.toml", 'slug = "gamma"\nname = "x"\n[limits]\nmax_connections = "many"\n', "limits.max_connections"),  # noqa: E501
    ("status", "gamma.toml", 'slug = "gamma"\nname = "x"\nstatus = "suspended"\n', "status"),
    ("missing name", "gamma.toml", 'slug = "gamma"\n', "name"),
    ("file name mismatch", "gamma.toml", 'slug = "delta"\nname = "x"\n', "slug"),
    ("secret", "gamma.toml", 'slug = "gamma"\nname = "x"\nsecret = "s3cr3t-value"\n', "secret"),
    ("api key", "gamma.toml", 'slug = "gamma"\nname = "x"\napi_key = "oc_s3cr3t-value"\n', "api_key"),  # noqa: E501
    ("nested token", "gamma.toml", 'slug = "gamma"\nname = "x"\n[keys]\ntoken = "s3cr3t-value"\n', "keys.token"),  # noqa: E501
    ("broken toml", "gamma.toml", 'slug = "gamma\n', "(file)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("file", "text", "field"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_an_invalid_manifest_exits_1_naming_file_and_field_and_applies_nothing(
    cli: Cli, file: str, text: str, field: str
) -> None:
    # The valid manifest sorts first: validation of the whole directory precedes any write.
    write(cli.cwd / "tenants", {"acme.toml": ACME, file: text})
    human = cli("tenants", "apply")
    assert (human.code, human.out) == (1, "")
    assert human.err.startswith("orgcast: invalid manifest; nothing was applied:\n")
    assert f"  tenants/{file}: {field}: " in human.err
    assert "s3cr3t" not in human.err

    result = cli("tenants", "apply", "--json")
    assert result.code == 1
    error = result.json()["error"]
    assert error["code"] == "invalid_manifest"
    assert [(d["file"], d["field"]) for d in error["details"]] == [(f"tenants/{file}", field)]
    assert slugs(cli.ok("tenants", "list", "--json")) == []


def test_every_invalid_manifest_in_the_directory_is_reported_at_once(cli: Cli) -> None:
    write(
        cli.cwd / "tenants",
        {
            "acme.toml": ACME.replace("max_connections = 500", "max_connections = 0"),
            "beta.toml": 'slug = "gamma"\nname = "x"\n',
            "delta.toml": 'slug = "delta"\nname = "x"\ntoken = "t"\n',
            "notes.txt": "not a manifest",
        },
    )
    error = cli("tenants", "apply", "--json").json()["error"]
    assert error["details"] == [
        {
            "file": "tenants/acme.toml",
            "field": "limits.max_connections",
            "message": "Input should be greater than or equal to 1",
        },
        {
            "file": "tenants/beta.toml",
            "field": "slug",
            "message": "'gamma' does not match the file name 'beta.toml'",
        },
        {
            "file": "tenants/delta.toml",
            "field": "token",
            "message": "secrets are never kept in manifests (signing keys and API keys live "
            "only in the database); remove this key",
        },
    ]
    assert slugs(cli.ok("tenants", "list", "--json")) == []


def test_apply_of_a_missing_directory_exits_1(cli: Cli) -> None:
    result = cli("tenants", "apply", "nowhere")
    assert (result.code, result.out) == (1, "")
    assert result.err == (
        "orgcast: invalid manifest; nothing was applied:\n"
        "  nowhere: (directory): no such directory\n"
    )


def test_apply_of_an_empty_directory_succeeds_with_nothing_to_do(cli: Cli) -> None:
    (cli.cwd / "tenants").mkdir()
    assert cli.ok("tenants", "apply").out == "no manifests in tenants\n"
    assert cli.ok("tenants", "apply", "--json").json() == {"dry_run": False, "tenants": []}


def test_the_shipped_demo_manifest_applies_and_a_token_for_it_can_be_minted(cli: Cli) -> None:
    shutil.copytree(REPO / "tenants", cli.cwd / "tenants")
    assert cli.ok("tenants", "apply").out == "demo: created\n"
    demo = tenant(cli, "demo")
    assert (demo["name"], demo["ephemeral_events"]) == ("Demo Organization", ["typing"])
    assert demo["limits"] == {"max_connections": 1000, "messages_per_second": 20}
    token = cli.ok("token", "demo", "--sub", "demo-user", "--name", "Demo User").out.strip()
    assert token.count(".") == 2


# -- the service itself, without a database -----------------------------------------------------


def test_load_directory_returns_validated_manifests_in_file_name_order(tmp_path: Path) -> None:
    write(tmp_path, {"beta.toml": BETA, "acme.toml": ACME})
    manifests = load_directory(tmp_path)
    assert [m.slug for m in manifests] == ["acme", "beta"]
    assert manifests[0].declared() == {
        "name": "Acme Inc",
        "limits": {"max_connections": 500, "messages_per_second": 10.0},
        "ephemeral_events": ["cursor", "typing"],
        "allowed_origins": ["https://app.acme.example"],
    }


def test_load_manifest_refuses_secret_like_keys_at_any_depth(tmp_path: Path) -> None:
    path = tmp_path / "acme.toml"
    path.write_text(
        'slug = "acme"\nname = "x"\nSigning-Key = "a"\n'
        '[limits]\nmax_connections = 1\nclient_secret = "b"\n[backend]\npassword = "c"\n'
    )
    with pytest.raises(ManifestError) as refused:
        load_manifest(path)
    assert [(p.file, p.field) for p in refused.value.problems] == [
        (str(path), "Signing-Key"),
        (str(path), "limits.client_secret"),
        (str(path), "backend.password"),
    ]
