import random
import re

from totes_local import vocab


def test_address_has_every_required_field_and_real_layouts():
    rng = random.Random(1)
    addresses = [vocab.address(rng) for _ in range(300)]
    for place in addresses:
        assert re.fullmatch(r"\d{3,5} \S+ \S+", place["address_line_1"])
        assert re.fullmatch(r"\d{5}(-\d{4})?", place["postal_code"])
        assert re.fullmatch(r"\d{4} \d{6}", place["phone"])
        assert place["city"] and place["country"] in vocab.COUNTRIES
    assert any(place["district"] is None for place in addresses)
    assert any(place["address_line_2"] is not None for place in addresses)
    assert any(place["address_line_2"] is None for place in addresses)


def test_company_names_follow_the_legal_name_shapes():
    rng = random.Random(2)
    names = {vocab.company(rng) for _ in range(200)}
    assert any(name.endswith(" and Sons") for name in names)
    assert any(re.fullmatch(r"\S+, \S+ and \S+", name) for name in names)
    assert any(" - " in name for name in names)


def test_decorated_person_sometimes_has_title_or_suffix():
    rng = random.Random(3)
    people = [vocab.person(rng, decorated=1.0) for _ in range(50)]
    assert all(len(person.split()) == 3 for person in people)
    assert all(len(vocab.person(rng).split()) == 2 for _ in range(50))


def test_email_keeps_apostrophes_and_lowercases():
    assert vocab.email("Irving", "O'Keefe") == "irving.o'keefe@terrifictotes.com"


def test_design_file_name_is_material_date_and_tag():
    name = vocab.design_file_name(random.Random(4), "Steel", "20230513")
    assert re.fullmatch(r"steel-20230513-[a-z0-9]{4}\.json", name)


def test_composers_are_deterministic_for_a_seed():
    assert vocab.address(random.Random(9)) == vocab.address(random.Random(9))
    assert vocab.company(random.Random(9)) == vocab.company(random.Random(9))
