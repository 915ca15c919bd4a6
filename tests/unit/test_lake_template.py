"""The lake's Athena named queries are the dashboard's questions, as their files say them."""
from totes_local import cfn, queries

RESOURCES = cfn.load()["Resources"]


def named_queries() -> dict[str, dict]:
    return {body["Properties"]["Name"]: body["Properties"] for body in RESOURCES.values()
            if body["Type"] == "AWS::Athena::NamedQuery"}


def test_every_lake_question_is_a_named_query_in_the_lake_workgroup_with_its_files_sql():
    every, sql = queries.load_queries(), queries.lake_queries()
    named = named_queries()
    assert set(named) == {every[name].title for name in queries.LAKE_QUESTIONS}
    for name in queries.LAKE_QUESTIONS:
        properties = named[every[name].title]
        assert properties["QueryString"].strip() == sql[name].strip(), name
        assert properties["Database"] == {"Ref": "LakeDatabase"}
        assert properties["WorkGroup"] == {"Ref": "LakeWorkGroup"}


def test_the_workgroup_enforces_engine_3_and_its_own_encrypted_results():
    configuration = RESOURCES["LakeWorkGroup"]["Properties"]["WorkGroupConfiguration"]
    assert configuration["EnforceWorkGroupConfiguration"] is True
    assert configuration["EngineVersion"]["SelectedEngineVersion"] == "Athena engine version 3"
    results = configuration["ResultConfiguration"]
    assert "AthenaResultsBucket" in str(results["OutputLocation"])
    assert results["EncryptionConfiguration"] == {"EncryptionOption": "SSE_S3"}


def test_athenas_results_are_private_encrypted_tls_only_and_expire():
    # Athena writes results as the principal running the query, so no deny of writes but by
    # one role here (unlike the kept buckets); the rest of the hardening is the same.
    properties = RESOURCES["AthenaResultsBucket"]["Properties"]
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    assert properties["OwnershipControls"] == {
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    expiry, markers = properties["LifecycleConfiguration"]["Rules"]
    assert expiry["ExpirationInDays"] == 7
    assert expiry["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    assert markers == {"Id": "remove-expired-delete-markers", "Status": "Enabled",
                       "ExpiredObjectDeleteMarker": True}
    (policy,) = [body["Properties"]["PolicyDocument"] for body in RESOURCES.values()
                 if body["Type"] == "AWS::S3::BucketPolicy"
                 and body["Properties"]["Bucket"] == {"Ref": "AthenaResultsBucket"}]
    (deny,) = policy["Statement"]
    assert deny["Sid"] == "DenyInsecureTransport" and deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_every_dashboard_question_is_a_lake_question():
    assert set(queries.LAKE_QUESTIONS) == {query.name for query in
                                           queries.sections(queries.load_queries())} | {"headline"}
    assert set(queries.LAKE_TRANSLATED) < set(queries.LAKE_QUESTIONS)
    assert queries.lake_parameters("order_history") == ("order_id",)
    assert queries.lake_parameters("headline") == ()


def test_a_translation_is_refused_when_its_question_marks_do_not_match_the_parameters(tmp_path):
    import pytest

    for name in queries.LAKE_TRANSLATED:
        text = (queries.LAKE_QUERY_DIR / f"{name}.sql").read_text()
        (tmp_path / f"{name}.sql").write_text(text)
    history = tmp_path / "order_history.sql"
    history.write_text(history.read_text().replace("CAST(? AS integer)", "11204"))
    with pytest.raises(queries.QueryFileError, match="0 \\? for 1 parameter"):
        queries.lake_queries(lake_directory=tmp_path)
    history.write_text(history.read_text().replace("11204", "CAST(:order_id AS integer)"))
    with pytest.raises(queries.QueryFileError, match="not :names"):
        queries.lake_queries(lake_directory=tmp_path)


def test_athenas_results_bucket_and_its_policy_outlive_the_stack_and_empty_themselves():
    """``sam delete`` cannot delete a bucket holding objects, and this one always holds some.

    So it is retained (with its TLS-only policy), named in an output, and its lifecycle
    (above) expires results, their old versions and the delete markers left behind, so
    that after the last query it becomes empty and ``aws s3 rb`` removes it (deploy.md).
    """
    template = cfn.load()
    for name in ("AthenaResultsBucket", "AthenaResultsBucketPolicy"):
        body = template["Resources"][name]
        assert body["DeletionPolicy"] == "Retain" == body["UpdateReplacePolicy"], name
    assert template["Outputs"]["AthenaResultsBucketName"]["Value"] == {
        "Ref": "AthenaResultsBucket"}
