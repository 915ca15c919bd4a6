from datetime import timedelta

from ingest_fixtures import T0, decoded, row

from totes import reference, star

LATER = T0 + timedelta(hours=1)


def frame(table, *rows):
    return star.source_frame(table, decoded(table, rows))


def empty(table):
    return star.empty_source_frame(table)


def state(**tables):
    return {table: tables.get(table, empty(table)) for table in reference.REFERENCE_TABLES}


def changes(**ids):
    return {table: set(ids.get(table, ())) for table in reference.REFERENCE_TABLES}


def column(frame_, name):
    return frame_[name].tolist()


def test_merge_latest_takes_newer_versions_and_new_ids():
    previous = frame("address", row("address", address_id=1, city="Old"),
                     row("address", address_id=2, city="Kept"))
    batch = frame("address", row("address", address_id=1, city="New", last_updated=LATER),
                  row("address", address_id=3, city="Added"))
    merged = reference.merge_latest(previous, batch, "address")
    assert dict(zip(merged["address_id"], merged["city"])) == {1: "New", 2: "Kept", 3: "Added"}


def test_merge_latest_lets_the_batch_win_whatever_its_last_updated():
    previous = frame("department", row("department", department_name="Typo",
                                       last_updated=T0.replace(year=2027)))
    corrected = frame("department", row("department", department_name="Fixed"))
    merged = reference.merge_latest(previous, corrected, "department")
    assert column(merged, "department_name") == ["Fixed"]


def test_merge_latest_of_nothing_is_empty():
    assert reference.merge_latest(empty("staff"), empty("staff"), "staff").empty


def test_changed_ids_are_the_ids_in_the_batch():
    batch = frame("staff", row("staff", staff_id=4), row("staff", staff_id=9))
    assert reference.changed_ids(batch, "staff") == {4, 9}


def test_address_change_updates_location_and_every_counterparty_with_that_legal_address():
    current = state(
        address=frame("address", row("address", address_id=1, city="Moved", last_updated=LATER),
                      row("address", address_id=2, city="Same")),
        counterparty=frame("counterparty",
                           row("counterparty", counterparty_id=10, legal_address_id=1),
                           row("counterparty", counterparty_id=11, legal_address_id=1),
                           row("counterparty", counterparty_id=12, legal_address_id=2)))
    result = reference.propagate(current, changes(address={1}))
    assert column(result.dimensions["dim_location"], "location_id") == [1]
    counterparties = result.dimensions["dim_counterparty"]
    assert sorted(column(counterparties, "counterparty_id")) == [10, 11]
    assert set(column(counterparties, "counterparty_legal_city")) == {"Moved"}
    assert result.dimensions["dim_staff"].empty


def test_department_change_updates_every_staff_member_of_that_department():
    current = state(
        department=frame("department",
                         row("department", department_id=1, department_name="Renamed"),
                         row("department", department_id=2, department_name="Other")),
        staff=frame("staff", row("staff", staff_id=1, department_id=1),
                    row("staff", staff_id=2, department_id=1),
                    row("staff", staff_id=3, department_id=2)))
    result = reference.propagate(current, changes(department={1}))
    staff = result.dimensions["dim_staff"]
    assert sorted(column(staff, "staff_id")) == [1, 2]
    assert set(column(staff, "department_name")) == {"Renamed"}
    assert result.dimensions["dim_location"].empty


def test_new_counterparty_gets_an_address_that_arrived_in_an_earlier_run():
    current = state(address=frame("address", row("address", address_id=7, city="Earlier")),
                    counterparty=frame("counterparty", row("counterparty", counterparty_id=20,
                                                           legal_address_id=7)))
    result = reference.propagate(current, changes(counterparty={20}))
    counterparty = result.dimensions["dim_counterparty"]
    assert column(counterparty, "counterparty_legal_city") == ["Earlier"]
    assert result.dimensions["dim_location"].empty


def test_new_staff_gets_a_department_that_arrived_in_an_earlier_run():
    current = state(department=frame("department", row("department", department_id=3,
                                                       location="Leeds")),
                    staff=frame("staff", row("staff", staff_id=5, department_id=3)))
    result = reference.propagate(current, changes(staff={5}))
    assert column(result.dimensions["dim_staff"], "location") == ["Leeds"]


def test_child_without_its_parent_is_deferred_not_written_with_nulls():
    current = state(counterparty=frame("counterparty", row("counterparty", counterparty_id=30,
                                                           legal_address_id=99)),
                    staff=frame("staff", row("staff", staff_id=8, department_id=77)))
    result = reference.propagate(current, changes(counterparty={30}, staff={8}))
    assert result.dimensions["dim_counterparty"].empty
    assert result.dimensions["dim_staff"].empty
    assert result.deferred == {"dim_counterparty": [30], "dim_staff": [8]}


def test_deferred_child_is_written_when_its_parent_arrives():
    current = state(address=frame("address", row("address", address_id=99, city="Late")),
                    counterparty=frame("counterparty", row("counterparty", counterparty_id=30,
                                                           legal_address_id=99)))
    result = reference.propagate(current, changes(address={99}))
    assert column(result.dimensions["dim_counterparty"], "counterparty_id") == [30]
    assert result.deferred == {}


def test_unchanged_reference_state_writes_nothing():
    current = state(address=frame("address", row("address")),
                    counterparty=frame("counterparty", row("counterparty")),
                    department=frame("department", row("department")),
                    staff=frame("staff", row("staff")))
    result = reference.propagate(current, changes())
    assert all(dimension.empty for dimension in result.dimensions.values())
