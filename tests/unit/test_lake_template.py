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
