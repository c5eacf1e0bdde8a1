import pytest

from builders.recipe import RecipeError, load_recipe, parse_recipe


def _raw(**changes):
    raw = {
        "name": "t",
        "seed": 1,
        "image_size": 64,
        "source": {"kind": "procedural", "train": 4, "test": 2},
        "subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 0.5}],
    }
    raw.update(changes)
    return raw


def test_shipped_recipes_load_and_hash_stably():
    a, b = load_recipe("icd-tiny"), load_recipe("icd-tiny")
    assert a.sha256 == b.sha256
    assert [s.name for s in a.subsets] == ["icd-qrcode", "icd-watermark", "icd-text", "icd-mixed"]
    assert load_recipe("icd-debug").sha256 != a.sha256


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"subsets": [{"name": "q", "concepts": ["logo"], "fraction": 0.5}]}, "subsets.q.concepts"),
        ({"subsets": [{"name": "q", "concepts": ["qrcode", "text", "qrcode"], "fraction": 0.5}]}, r"subsets.q.concepts: \['qrcode'\] listed more than once"),
        ({"subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 1.5}]}, "subsets.q.fraction"),
        ({"subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": -0.1}]}, "subsets.q.fraction"),
        ({"subsets": [{"name": "q", "concepts": ["qrcode"], "fraction": 0.5, "instances": [2, 1]}]}, "subsets.q.instances"),
        ({"subsets": []}, "subsets"),
        ({"image_size": "64"}, "image_size"),
        ({"colour": 1}, "colour"),
        ({"source": {"kind": "nope"}}, "source.kind"),
        ({"concepts": {"logo": {}}}, "concepts.logo"),
    ],
)
def test_bad_recipes_fail_naming_the_field(changes, field):
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        parse_recipe(_raw(**changes))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"source": {"kind": ["procedural"], "train": 4, "test": 2}}, "source.kind"),
        ({"source": {"kind": "procedural", "train": 4, "test": 2, "colors": ["red", ["blue"]]}}, "source.colors"),
        ({"source": {"kind": "procedural", "train": 4, "test": 2, "shapes": [{}]}}, "source.shapes"),
        ({"concepts": {"qrcode": {"error_levels": [{}]}}}, "concepts.qrcode.error_levels"),
        ({"concepts": {"qrcode": {"error_levels": 1.5}}}, "concepts.qrcode.error_levels"),
    ],
)
def test_a_list_or_table_where_a_name_goes_fails_naming_the_field(changes, field):
    """Names are looked up among known ones: a list or table there is refused, not an unhashable TypeError."""
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        parse_recipe(_raw(**changes))


def test_empty_folder_source_fails_at_once(tmp_path):
    with pytest.raises(RecipeError, match=str(tmp_path)):
        parse_recipe(_raw(source={"kind": "folder", "path": str(tmp_path)}))


def test_bad_file_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(RecipeError, match="bad.toml"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="no such recipe"):
        load_recipe("no-such-recipe")


def test_two_subsets_of_one_name_are_refused():
    """A subset's name is its folder: two of one name would write into each other."""
    q = {"name": "q", "concepts": ["qrcode"], "fraction": 0.5}
    with pytest.raises(RecipeError, match=r"subsets: names must be unique, .* got \['q', 'q'\]"):
        parse_recipe(_raw(subsets=[q, {**q, "concepts": ["text"]}]))


def test_two_subsets_whose_names_differ_in_case_only_are_refused():
    """icd-QR and icd-qr are one folder on macOS and Windows: one subset's shards overwrote the other's."""
    q = {"name": "icd-qr", "concepts": ["qrcode"], "fraction": 0.5}
    with pytest.raises(RecipeError, match=r"also ignoring case .* got \['icd-qr', 'icd-QR'\]"):
        parse_recipe(_raw(subsets=[q, {**q, "name": "icd-QR", "concepts": ["text"]}]))


def test_a_recipe_files_relative_folder_is_recorded_absolute(tmp_path, monkeypatch):
    """The same folder typed relatively or absolutely is one recipe: the path is resolved where the recipe is read."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\nseed = 1\nimage_size = 32\n[source]\nkind = "folder"\npath = "imgs"\n'
                      '[[subsets]]\nname = "q"\nconcepts = ["qrcode"]\nfraction = 0.5\n')
    monkeypatch.chdir(tmp_path)
    assert load_recipe(recipe).source["path"] == str((tmp_path / "imgs").resolve())


def test_a_source_naming_missing_tars_fails_at_once_counting_them(tmp_path):
    """--source with tars that are not there is refused when it is read, before a build starts, with how many are missing."""
    from builders.recipe import source_from_spec

    (tmp_path / "00000.tar").write_bytes(b"")
    with pytest.raises(RecipeError, match=rf"2 of 3 tar files do not exist, first '{tmp_path}/00001.tar'"):
        source_from_spec(f"{tmp_path}/{{00000..00002}}.tar")
