"""The source's identity in each manifest: recorded when readable, never a failure when not."""
import uuid

from totes import ingest
from totes_local import stack

from test_ingest import latest_manifest, seed_one_of_each


def test_each_manifest_records_the_clusters_identity_and_timeline(source_db, aws):
    seed_one_of_each(source_db)
    [[identifier, timeline, started]] = source_db.run(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), "
        "(SELECT timeline_id FROM pg_control_checkpoint()), "
        "pg_postmaster_start_time() AT TIME ZONE 'UTC'")

    report = ingest.run_ingest()

    assert latest_manifest(aws["INGEST_BUCKET"])["source"] == {
        "system_identifier": identifier, "timeline": timeline,
        "started": started.isoformat(timespec="microseconds") + "Z"}
    assert report.resync is None and report.summary()["resync"] is None


def test_a_login_that_may_not_read_pg_control_still_ingests_and_records_no_identity(
        source_db, aws, postgres):
    seed_one_of_each(source_db)
    [[dbname]] = source_db.run("SELECT current_database()")
    role = f"ingest_{uuid.uuid4().hex[:8]}"
    source_db.run(f'CREATE ROLE "{role}" LOGIN')
    source_db.run(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    source_db.run("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system(), "
                  "pg_catalog.pg_control_checkpoint(), pg_catalog.pg_walfile_name(pg_lsn) "
                  "FROM PUBLIC")   # this database only
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**postgres.secret(dbname), "username": role}},
                    buckets=())

    first = ingest.run_ingest()
    second = ingest.run_ingest()

    assert first.total_rows > 0 and second.resync is None
    source = latest_manifest(aws["INGEST_BUCKET"])["source"]
    assert source["system_identifier"] is None and source["timeline"] is None
    assert source["started"]      # pg_postmaster_start_time() is open to every login
