"""Channel lists: loading, stable group numbers, long ids, width limits, bad lists."""

from pathlib import Path

import pytest

from n2w_pipeline.channels import (
    MAX_IDENTIFIER_BYTES,
    ChannelListError,
    GroupTooWideError,
    column_name,
    load_catalog,
    max_channels_per_group,
    row_bytes,
)

REPO = Path(__file__).resolve().parent.parent


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    p = folder / name
    p.write_text(text, encoding="utf-8")
    return p


def test_reference_lists_load_as_three_numbered_groups():
    cat = load_catalog(REPO / "channel_lists")
    assert [(g.number, len(g.channels)) for g in cat.groups] == [(1, 347), (2, 655), (3, 50)]
    assert cat.locate("/hs4sd_v1/sg01/////run") == (3, 0)
    assert cat.locate("/not/a/channel") is None
    assert all(g.columns == g.channels for g in cat.groups)  # reference ids are <= 58 bytes


def test_comments_blank_lines_and_whitespace_are_ignored(tmp_path):
    write(tmp_path, "1_a.txt", "# header\n\n  /a/one  \n/a/two\r\n   \n# tail\n")
    (g,) = load_catalog(tmp_path).groups
    assert g.channels == ("/a/one", "/a/two")


def test_adding_a_list_never_renumbers(tmp_path):
    write(tmp_path, "2_b.txt", "/b\n")
    write(tmp_path, "7_g.txt", "/g\n")
    before = {g.name: g.number for g in load_catalog(tmp_path).groups}
    write(tmp_path, "1_a.txt", "/a\n")
    after = {g.name: g.number for g in load_catalog(tmp_path).groups}
    assert before == {"b": 2, "g": 7}
    assert after == {"a": 1, "b": 2, "g": 7}


def test_channel_in_two_lists_names_both_files_and_lines(tmp_path):
    write(tmp_path, "1_a.txt", "/x\n/dup\n")
    write(tmp_path, "2_b.txt", "# c\n/y\n/dup\n")
    with pytest.raises(ChannelListError) as e:
        load_catalog(tmp_path)
    msg = str(e.value)
    assert "2_b.txt:3" in msg and "1_a.txt:2" in msg and "/dup" in msg


def test_duplicate_inside_one_list(tmp_path):
    write(tmp_path, "1_a.txt", "/x\n/y\n/x\n")
    with pytest.raises(ChannelListError, match=r"1_a.txt:3: channel '/x' is also in .*1_a.txt:1"):
        load_catalog(tmp_path)


def test_empty_list_is_an_error(tmp_path):
    write(tmp_path, "1_a.txt", "/x\n")
    write(tmp_path, "2_empty.txt", "# nothing yet\n\n")
    with pytest.raises(ChannelListError, match=r"2_empty.txt: the list is empty"):
        load_catalog(tmp_path)


def test_badly_named_file_and_reused_number(tmp_path):
    write(tmp_path, "channels.txt", "/x\n")
    with pytest.raises(ChannelListError, match=r"channels.txt: file name must be <group number>_<name>.txt"):
        load_catalog(tmp_path)
    (tmp_path / "channels.txt").unlink()
    write(tmp_path, "1_a.txt", "/x\n")
    write(tmp_path, "01_b.txt", "/y\n")
    with pytest.raises(ChannelListError, match="file name must be"):
        load_catalog(tmp_path)
    (tmp_path / "01_b.txt").unlink()
    write(tmp_path, "1_b.txt", "/y\n")
    with pytest.raises(ChannelListError, match=r"1_b.txt: group number 1 is also used by .*1_a.txt"):
        load_catalog(tmp_path)


def test_long_ids_get_deterministic_unique_short_columns(tmp_path):
    base = "/dnv_v2/411.1/C101.31/S90.1/meta/qty-temperature/cnt-lubricating.oil/pos-inlet"
    a, b = base + "/detail-one", base + "/detail-two"  # same first 63 bytes
    assert a.encode()[:63] == b.encode()[:63]
    write(tmp_path, "1_a.txt", f"{a}\n{b}\n/short\n")
    (g,) = load_catalog(tmp_path).groups
    ca, cb, cs = g.columns
    assert cs == "/short"
    assert ca != cb
    assert len(ca.encode()) <= MAX_IDENTIFIER_BYTES and len(cb.encode()) <= MAX_IDENTIFIER_BYTES
    assert ca == column_name(a)  # deterministic
    assert g.long_ids == {ca: a, cb: b}
    # multi-byte characters are never cut in half
    name = column_name("/ø" * 40)
    assert len(name.encode()) <= MAX_IDENTIFIER_BYTES
    name.encode("utf-8").decode("utf-8")


def test_oversized_group_is_refused_with_numbers(tmp_path):
    limit = max_channels_per_group()
    assert row_bytes(limit) <= 8160 < row_bytes(limit + 1)
    write(tmp_path, "1_ok.txt", "".join(f"/c{i}\n" for i in range(limit)))
    assert len(load_catalog(tmp_path).groups[0].channels) == limit
    write(tmp_path, "2_wide.txt", "".join(f"/w{i}\n" for i in range(1052)))
    with pytest.raises(GroupTooWideError) as e:
        load_catalog(tmp_path)
    msg = str(e.value)
    assert "group 2 (wide)" in msg and "1052 channels" in msg
    assert f"{row_bytes(1052)} bytes" in msg and "8160" in msg and "1600" in msg
