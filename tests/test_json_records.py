"""The fields two records differ in, as every "did the config change?" message names them."""
from implicit_concept.json_records import shown_differences


def test_up_to_the_shown_number_of_fields_are_all_named_and_more_are_counted():
    fields = [f"f{i}" for i in range(10)]
    assert shown_differences(fields[:3], show=3) == "f0, f1, f2"
    assert shown_differences(fields[:4], show=3) == "f0, f1, f2 and 1 more"
    assert shown_differences(fields) == "f0, f1, f2, f3, f4, f5, f6, f7 and 2 more"
