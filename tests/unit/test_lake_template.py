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
    (expiry,) = properties["LifecycleConfiguration"]["Rules"]
    assert expiry["ExpirationInDays"] == 7
    (policy,) = [body["Properties"]["PolicyDocument"] for body in RESOURCES.values()
                 if body["Type"] == "AWS::S3::BucketPolicy"
                 and body["Properties"]["Bucket"] == {"Ref": "AthenaResultsBucket"}]
    (deny,) = policy["Statement"]
    assert deny["Sid"] == "DenyInsecureTransport" and deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
