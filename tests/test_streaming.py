"""Sources and shards stream as labs hold LAION: local paths, ``pipe:`` commands and http(s) URLs
(opened by webdataset's ``gopen``), grouped by one rule and read within the same bounds; tar hard
links are resolved or counted."""
from __future__ import annotations

import base64
import functools
import http.server
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from benchmark.perf import hostile_inputs as hostile
from builders.build import build_dataset
from builders.recipe import parse_recipe
from builders.sources import WebDatasetConfig, WebDatasetSource
from implicit_concept.shard_reader import group_members, iter_samples, open_tar
from tests.bounded_memory import memory_headroom
from tests.test_sources import jpeg, write_tar

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset opens http(s) URLs with curl")


@pytest.fixture()
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1 by a thread of this process, stopped after the test."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _no_retry_wait(monkeypatch):
    """A stream read again after a transient failure is read again at once here."""
    from builders.sources import webdataset_source

    monkeypatch.setattr(webdataset_source, "STREAM_RETRY_SECONDS", 0.0)


def _source_tars(folder: Path) -> None:
    for shard in range(2):
        members = []
        for i in range(6):
            key = f"{shard:05d}{i:04d}"
            members += [(f"{key}.jpg", jpeg((40 * i, 90, 200 - 20 * shard))), (f"{key}.txt", f"a picture number {i}".encode())]
        members += [(f"{shard:05d}9999.txt", b"a caption without its image")]
        write_tar(folder / f"{shard:05d}.tar", members)


def _recipe(urls: str) -> dict:
    return {
        "name": "streamed", "seed": 5, "image_size": 32, "shard_size": 100,
        "source": {"kind": "webdataset", "urls": urls, "test_fraction": 0.3},
        "subsets": [{"name": "q", "concepts": ["qrcode", "text"], "fraction": 0.7}],
    }


def _samples(out: Path) -> list[tuple[str, bytes, dict]]:
    """Every sample's key, image bytes and record, less the recipe's hash (the recipes differ in ``urls``)."""
    found = []
    for shard in sorted(out.rglob("*.tar")):
        for s in iter_samples(shard):
            record = s.meta.to_json()
            record.pop("recipe_sha256")
            found.append((f"{shard.parent.name}/{s.key}", s.image.tobytes(), record))
    return found


def test_a_build_from_http_and_from_a_pipe_gives_the_samples_of_a_local_build(served, tmp_path):
    folder, base = served
    _source_tars(folder)
    builds = {}
    for name, urls in {
        "local": f"{folder}/{{00000..00001}}.tar",
        "http": f"{base}/{{00000..00001}}.tar",
        "pipe": f"pipe:cat {folder}/{{00000..00001}}.tar",
    }.items():
        report = build_dataset(parse_recipe(_recipe(urls)), tmp_path / name, progress=False)
        assert report.samples == 12 and report.failures == {"no_image": 2}, (name, report)
        builds[name] = _samples(tmp_path / name)
    assert builds["http"] == builds["local"] == builds["pipe"] and len(builds["local"]) == 12


def test_our_own_shards_stream_over_http(served, debug_dataset):
    folder, base = served
    shutil.copytree(debug_dataset / "icd-mixed", folder / "icd-mixed")
    local = [(s.key, s.meta.to_json()) for s in iter_samples(debug_dataset / "icd-mixed" / "train")]
    streamed = [(s.key, s.meta.to_json()) for s in iter_samples(f"{base}/icd-mixed/train/{{00000..00001}}.tar")]
    assert streamed == local and len(local) == 64


def test_an_unreachable_tar_is_one_counted_skip(served):
    _, base = served
    source = WebDatasetSource(WebDatasetConfig(f"{base}/missing.tar", test_fraction=0.0))
    [item] = source.read("train", 0)
    assert item.error == "unreadable_tar" and "missing.tar" in item.detail


def test_a_stream_keeps_the_member_cap(served):
    """A 2 MB .tar.gz of a member declaring 200 MB, served over HTTP: not read, counted."""
    folder, base = served
    good = hostile.good_members("g", 1, 0)
    data = hostile.zeros_tar_gz(good, hostile.big_member_header("h.jpg", 200 << 20), hostile.member("h.txt", b"x") + hostile.good_members("k", 1, 0), size=200 << 20)
    (folder / "00000.tar.gz").write_bytes(data)
    source = WebDatasetSource(WebDatasetConfig(f"{base}/00000.tar.gz", test_fraction=0.0))
    with memory_headroom():
        items = list(source.read("train", 0))
    assert [i.error for i in items] == [None, "member_too_large", None]


def _linked_tar(path: Path) -> None:
    """Sample b's image is a hard link to sample a's; sample c's caption links to a's caption."""
    image = jpeg()
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("a.jpg", image), ("a.txt", b"first")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (("b.jpg", "a.jpg"), ("c.txt", "a.txt")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.LNKTYPE, target
            tf.addfile(link)
            if name == "b.jpg":
                info = tarfile.TarInfo("b.txt")
                info.size = 6
                tf.addfile(info, io.BytesIO(b"second"))
        info = tarfile.TarInfo("c.jpg")
        info.size = len(image)
        tf.addfile(info, io.BytesIO(image))


def test_hard_links_are_resolved_in_a_local_tar_and_counted_in_a_stream(tmp_path):
    _linked_tar(tmp_path / "00000.tar")
    local = {i.source_id: (i.error, i.image, i.caption) for i in WebDatasetSource(WebDatasetConfig(str(tmp_path / "00000.tar"), test_fraction=0.0)).read("train", 0)}
    assert local["00000.tar/b"] == (None, local["00000.tar/a"][1], "second")
    assert local["00000.tar/c"][0] is None and local["00000.tar/c"][2] == "first"
    streamed = {i.source_id: i for i in WebDatasetSource(WebDatasetConfig(f"pipe:cat {tmp_path}/00000.tar", test_fraction=0.0)).read("train", 0)}
    assert streamed["00000.tar/a"].error is None
    assert streamed["00000.tar/b"].error == "unresolved_hard_link" and "a.jpg" in streamed["00000.tar/b"].detail


def test_the_grouping_rule_is_webdatasets(tmp_path):
    """Our grouping (with its caps) and webdataset's own iterator agree on what a sample is; a key
    that comes back after other keys' members (``a.txt2`` here), which webdataset yields as a second
    sample of the same key, is refused instead (``duplicate_key``), its members not read."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    write_tar(tmp_path / "s.tar", [
        ("a.jpg", b"1"), ("a.txt", b"2"), ("dir/b.jpg", b"3"), ("dir/b.seg.png", b"4"), ("c.d.e.json", b"5"), ("a.txt2", b"6"),
    ])
    with open_tar(str(tmp_path / "s.tar")) as tf:
        ours = list(group_members(tf, keep={"jpg", "txt", "seg.png", "d.e.json", "txt2"}))
    with open(tmp_path / "s.tar", "rb") as stream:
        theirs = [
            (s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
            for s in group_by_keys(tar_file_expander([{"url": str(tmp_path / "s.tar"), "stream": stream}]))
        ]
    assert [(s.key, s.members) for s in ours[:-1]] == theirs[:-1]
    assert (ours[-1].key, ours[-1].members, ours[-1].refused.reason) == ("a", {}, "duplicate_key") and theirs[-1][0] == "a"


def test_a_source_tar_groups_as_webdataset_reads_it_hidden_members_and_all(tmp_path):
    """A macOS tar (``._KEY.jpg`` AppleDouble members before each file, a ``.DS_Store``) and members
    without an extension: the source's samples are webdataset's, read from a file or a stream, and
    each member webdataset leaves out is a record of its own."""
    import webdataset as wds

    members = [(".DS_Store", b"x")]
    for i in range(3):
        members += [(f"._{i}.jpg", b"\x00\x05\x16\x07"), (f"{i}.jpg", jpeg((60 * i, 9, 9))), (f"._{i}.txt", b"\x00\x05\x16\x07"),
                    (f"{i}.txt", f"picture {i}".encode()), ("LICENSE", b"cc-by")]
    write_tar(tmp_path / "00000.tar", members)
    theirs = [(s["__key__"], s["jpg"], s["txt"].decode()) for s in wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False)]
    for urls in (str(tmp_path / "00000.tar"), f"pipe:cat {tmp_path}/00000.tar"):
        items = list(WebDatasetSource(WebDatasetConfig(urls, test_fraction=0.0)).read("train", 0))
        assert [(i.source_id.split("/", 1)[1], i.image, i.caption) for i in items if i.error is None] == theirs
        assert len(theirs) == 3 and sorted(i.source_id for i in items if i.error) == sorted(
            [f"00000.tar/{n}" for n, _ in members if n.startswith(".")] + ["00000.tar/LICENSE"] * 3)


def _read(urls: str) -> list:
    return list(WebDatasetSource(WebDatasetConfig(urls, test_fraction=0.0)).read("train", 0))


def test_a_failed_command_is_one_record_saying_its_status_and_what_it_said(tmp_path):
    """A ``pipe:`` command that fails at once (read once: it does not work as given), or after part
    of a tar (read three times), is one record naming the command, its exit status and its
    stderr's last line (not Popen's arguments, nor the terminal)."""
    _source_tars(tmp_path)
    [failed] = _read("pipe:sh -c 'echo An error occurred: NoSuchBucket >&2; exit 2' 00000.tar")
    assert failed.error == "unreadable_tar"
    assert failed.detail == ("pipe:sh -c 'echo An error occurred: NoSuchBucket >&2; exit 2' 00000.tar: "
                             "the command exited with status 2: An error occurred: NoSuchBucket")
    runs = tmp_path / "runs"
    [refused] = _read(f"pipe:sh -c 'echo run >> {runs}; exit 2'")
    assert refused.error == "unreadable_tar" and runs.read_text() == "run\n"  # not read again: it cannot work
    cut = _read(f"pipe:sh -c 'head -c 9000 {tmp_path}/00000.tar; echo connection reset >&2; exit 1'")
    assert [i.error for i in cut] == [None, None, None, "corrupt_tar"]
    assert cut[-1].detail.endswith("the command exited with status 1: connection reset (after '000000002') (3 reads)")


class _Dropping(http.server.BaseHTTPRequestHandler):
    """Serves ``tar`` whole, or half of it before closing the connection (``/drop/``), or a 404."""

    tar = b""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/missing/"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.tar)))
        self.end_headers()
        self.wfile.write(self.tar[: len(self.tar) // 2] if self.path.startswith("/drop/") else self.tar)


def test_an_http_error_or_a_dropped_connection_is_said_in_words(tmp_path):
    _source_tars(tmp_path)
    _Dropping.tar = (tmp_path / "00000.tar").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dropping)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        [missing] = _read(f"{base}/missing/00000.tar")
        dropped = _read(f"{base}/drop/00000.tar")
        whole = _read(f"{base}/whole/00000.tar")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert missing.error == "unreadable_tar" and missing.detail.startswith(f"{base}/missing/00000.tar: curl exited with status 22 (")
    assert "HTTP error" in missing.detail and "404" in missing.detail
    assert dropped[-1].error == "corrupt_tar" and "status 18" in dropped[-1].detail and "partial file" in dropped[-1].detail
    assert dropped[-1].detail.endswith("(3 reads)") and "reads" not in missing.detail
    assert [i.error for i in whole] == [None] * 6 + ["no_image"] and 0 < len(dropped) - 1 < 6
    assert [i.image for i in dropped[:-1]] == [i.image for i in whole[: len(dropped) - 1]]


def test_a_stalled_stream_is_stopped_with_its_commands_and_recorded(tmp_path, monkeypatch):
    """A command that stops sending (a stalled download) no longer hangs the build: after
    ``STALL_SECONDS`` without a byte it is stopped, with everything its shell started, and the
    samples read before it are kept."""
    from implicit_concept import streams

    monkeypatch.setattr(streams, "STALL_SECONDS", 0.5)
    _source_tars(tmp_path)
    marker = tmp_path / "still-running"
    started = time.monotonic()
    [silent] = _read("pipe:sleep 30")
    stalled = _read(f"pipe:sh -c '(sleep 3; touch {marker}) & head -c 9000 {tmp_path}/00000.tar; wait' 00000.tar")
    assert time.monotonic() - started < 25  # not waited out (the silent one sleeps 30 s): read once, the one stalled after bytes three times
    assert silent.error == "unreadable_tar" and silent.detail == "pipe:sleep 30: no data for 0.5 s: the stream stalled and was stopped"
    assert [i.error for i in stalled] == [None, None, None, "corrupt_tar"] and stalled[-1].detail.endswith(
        "no data for 0.5 s: the stream stalled and was stopped (after '000000002') (3 reads)")
    time.sleep(3.5)
    assert not marker.exists()


def test_a_streams_compression_is_known_by_its_bytes_as_a_local_files_is(tmp_path):
    """A plain tar named ``.tar.gz`` and a gzipped one named ``.tar`` (as shards get renamed) read
    the same from a pipe as from disk."""
    import gzip

    _source_tars(tmp_path)
    shutil.copy(tmp_path / "00000.tar", tmp_path / "plain.tar.gz")
    (tmp_path / "zipped.tar").write_bytes(gzip.compress((tmp_path / "00000.tar").read_bytes()))
    expected = [(i.image, i.caption) for i in _read(str(tmp_path / "00000.tar"))]
    for name in ("plain.tar.gz", "zipped.tar"):
        for urls in (str(tmp_path / name), f"pipe:cat {tmp_path}/{name}"):
            assert [(i.image, i.caption) for i in _read(urls)] == expected, urls


def test_a_page_served_in_a_tars_place_is_said_for_what_it_is(served):
    """A login or virus-scan page served with status 200, or a command that writes nothing: the
    record says what came instead, as for a local file, not tarfile's 'truncated header'."""
    folder, base = served
    (folder / "00000.tar").write_bytes(b"<!DOCTYPE html><html><title>Sign in</title></html>")
    [page] = _read(f"{base}/00000.tar")
    assert page.error == "corrupt_tar" and page.detail == (
        f"{base}/00000.tar: text, not a tar (it begins '<!DOCTYPE html><html><title>Sign in</tit': "
        "an error page or a listing saved in the tar's place?)")
    [nothing] = _read("pipe:true 00000.tar")
    assert nothing.detail == "pipe:true 00000.tar: an empty stream (0 bytes), not a tar"


def test_a_stream_is_read_in_a_process_holding_over_1024_files(tmp_path):
    """A builder holding many files (a Ray worker, a large pool) gets descriptors past 1024, which
    select() cannot watch: the stream is read all the same."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}")
    _source_tars(tmp_path)
    if soft != resource.RLIM_INFINITY and soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        items = _read(f"pipe:cat {tmp_path}/00000.tar")
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [i.error for i in items] == [None] * 6 + ["no_image"]



class _Flaky(http.server.BaseHTTPRequestHandler):
    """Serves ``tar``, cutting the connection half-way on the first ``drops`` requests."""

    tar = b""
    drops = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.tar)))
        self.end_headers()
        if type(self).drops > 0:
            type(self).drops -= 1
            self.wfile.write(self.tar[: len(self.tar) // 2])
            return
        self.wfile.write(self.tar)


def test_a_stream_cut_once_is_read_again_and_gives_the_unbroken_reads_items(tmp_path):
    """A connection dropped half-way (curl's 18) or a command that fails once (a throttled S3 read)
    is read again from the start, the samples already given passed over: the items are those of an
    unbroken read, each once, with no record of the failure; one that fails every time is recorded."""
    _source_tars(tmp_path)
    whole = [(i.source_id, i.error, i.image) for i in _read(str(tmp_path / "00000.tar"))]
    _Flaky.tar = (tmp_path / "00000.tar").read_bytes()
    _Flaky.drops = 1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        over_http = [(i.source_id, i.error, i.image) for i in _read(f"http://127.0.0.1:{server.server_address[1]}/00000.tar")]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert over_http == whole and _Flaky.drops == 0
    marker = tmp_path / "failed-once"
    command = (f"pipe:sh -c 'if [ -e {marker} ]; then cat {tmp_path}/00000.tar; else touch {marker}; "
               f"head -c 9000 {tmp_path}/00000.tar; echo SlowDown >&2; exit 1; fi' 00000.tar")
    assert [(i.source_id, i.error, i.image) for i in _read(command)] == whole


def test_a_failed_command_read_to_its_end_fails_at_close_if_no_read_said_so():
    """tarfile reads to the end, then closes: the close is where a command's failure must surface,
    else its cut output would pass for a whole tar."""
    from implicit_concept.streams import StreamFailed, open_stream

    stream = open_stream("pipe:printf abc; exit 3")
    assert stream.readinto(buffer := bytearray(16)) == 3 and bytes(buffer[:3]) == b"abc"
    assert stream.readinto(buffer) == 0
    with pytest.raises(StreamFailed, match="pipe:printf abc; exit 3.*status 3"):
        stream.close()


class _Guarded(http.server.BaseHTTPRequestHandler):
    """Serves ``tar`` only to a request carrying user ``lab``'s password (HTTP Basic)."""

    tar = b""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"lab:s3cret").decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="shards"')
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.tar)))
        self.end_headers()
        self.wfile.write(self.tar)


def test_credentials_are_read_from_netrc_and_a_url_holding_them_is_refused_unshown(tmp_path, monkeypatch):
    _source_tars(tmp_path)
    _Guarded.tar = (tmp_path / "00000.tar").read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Guarded)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        for url in (f"http://lab:s3cret@127.0.0.1:{port}/00000.tar", f"https://lab@127.0.0.1:{port}/{{00000..00001}}.tar"):
            with pytest.raises(ValueError, match=r"holds a user or password, which the recipe.*~/\.netrc") as refused:
                WebDatasetConfig(url)
            assert "s3cret" not in str(refused.value) and "lab@" not in str(refused.value)
            assert f"***@127.0.0.1:{port}/" in str(refused.value)
        with pytest.raises(Exception, match="holds a user or password") as refused:
            parse_recipe(_recipe(f"http://lab:s3cret@127.0.0.1:{port}/00000.tar"))
        assert "s3cret" not in str(refused.value)
        [without] = _read(f"http://127.0.0.1:{port}/00000.tar")
        home = tmp_path / "home"
        home.mkdir()
        (home / ".netrc").write_text("machine 127.0.0.1 login lab password s3cret\n")
        (home / ".netrc").chmod(0o600)
        monkeypatch.setenv("HOME", str(home))
        with_netrc = _read(f"http://127.0.0.1:{port}/00000.tar")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert without.error == "unreadable_tar" and "401" in without.detail
    assert [i.error for i in with_netrc] == [None] * 6 + ["no_image"]


def _running(marker: str) -> list[str]:
    """Command lines of live processes that hold ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if marker in line:
                    found.append(line)
        except OSError:
            continue
    return found


@pytest.mark.parametrize("workers, sig", [(1, signal.SIGINT), (1, signal.SIGTERM), (1, signal.SIGKILL), (2, signal.SIGINT), (2, signal.SIGTERM),
                                          (2, signal.SIGKILL)])
def test_a_stopped_build_stops_its_pipe_commands_and_its_rerun_gives_the_same_bytes(tmp_path, workers, sig):
    """A ``pipe:`` command waits on the network (here: until a file exists). Ctrl-C (to the whole
    group) or SIGTERM (to the main process) stopped the build, but with 2 workers each command, in a
    process group of its own, lived on after it (re-parented, for as long as it waited), and with 1
    the build waited 10 s for it to exit. A SIGKILL to the main process: its workers, seeing it
    gone, end their commands too; with 1 the command's guard ends it (it once lived on)."""
    _source_tars(tmp_path)
    go = tmp_path / "go"  # the commands wait for it, 3 minutes at most: with the fix broken they outlive the test
    recipe = tmp_path / "streamed.toml"
    recipe.write_text(f'name = "streamed"\nseed = 5\nimage_size = 32\nshard_size = 100\n[source]\nkind = "webdataset"\n'
                      f'urls = "pipe:n=0; until test -e {go} || [ $n -ge 900 ]; do n=$((n+1)); sleep 0.2; done; cat {tmp_path}/{{00000..00001}}.tar"\ntest_fraction = 0.3\n'
                      f'[[subsets]]\nname = "q"\nconcepts = ["qrcode", "text"]\nfraction = 0.7\n')
    cmd = [sys.executable, "-m", "benchmark.cli", "build", str(recipe), "--out", str(tmp_path / "out"), "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_running(str(go))) < workers:
        time.sleep(0.05)
    (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)
    stopped = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - stopped < 5, "the build waited for its pipe commands"
    if sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig, err
        assert "Traceback" not in err and err.splitlines()[-1] == (
            f"implicit-concept build: {'interrupted' if sig == signal.SIGINT else 'terminated'}; rerun the same command to resume")
    time.sleep(3)  # a worker looks at its parent once a second
    assert _running(str(go)) == [], "pipe: commands outlived the build"
    go.touch()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert subprocess.run([*cmd[:-3], str(tmp_path / "whole"), "--workers", "1"], env=env, capture_output=True).returncode == 0
    assert (tmp_path / "out" / "checksums.sha256").read_text() == (tmp_path / "whole" / "checksums.sha256").read_text()


OPENS_A_STREAM = """
import os, sys, time
from implicit_concept.streams import open_stream
from implicit_concept.worker_processes import start_worker

if sys.argv[2:] == ["worker"]:
    start_worker()
stream = open_stream(sys.argv[1])
os.write(1, (str(stream.proc.pid) + "\\n").encode())
time.sleep(600)
"""


@pytest.mark.parametrize("command", ["sleep 600", "sleep 600 | cat", "sleep 600 & wait"])
def test_a_pipe_command_ends_when_the_process_reading_it_is_killed_outright(command):
    """SIGKILL (the OOM killer, ``kill -9``) lets the reader run nothing more: its command, waiting
    (on the network, here on a sleep), in a process group of its own, once outlived it for as long
    as it waited. Its group's guard now ends it."""
    from tests.process_table import left_in_group

    proc = subprocess.Popen([sys.executable, "-c", OPENS_A_STREAM, f"pipe:{command}"], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        group = int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert left_in_group(group, 15) == []


def test_a_build_worker_stopped_by_sigterm_ends_what_its_pipe_command_left_outside_its_tree():
    """A ``pipe:`` command whose shell starts something that leaves its tree (a daemon, a double fork:
    re-parented, still in the command's group). The worker's SIGTERM kills the processes below it,
    the command's guard among them, so only the worker ending the command's whole group ends that
    one: with the group left alone it lived on for its 600 s."""
    from tests.process_table import alive_in_group, left_in_group, parent_of

    proc = subprocess.Popen([sys.executable, "-c", OPENS_A_STREAM, "pipe:(sleep 600 &); sleep 600", "worker"], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})

    def outside_the_tree() -> list[int]:  # the group's processes whose parent is neither the worker nor one of them
        members = alive_in_group(group)
        return [p for p in members if parent_of(p) not in {None, proc.pid, *members}]  # None: it has just ended

    try:
        group = int(proc.stdout.readline())
        deadline = time.monotonic() + 30
        while not outside_the_tree() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outside_the_tree()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert left_in_group(group, 15) == []


def test_a_pipe_commands_leftovers_end_with_its_stream_and_its_status_is_kept(tmp_path):
    """A command that exits leaving a process of its own running in its group: closing the stream
    ends that process too (the guard's pipe closed), and the command's own status still decides."""
    from implicit_concept.streams import StreamFailed, open_stream
    from tests.process_table import alive_in_group, left_in_group

    stream = open_stream("pipe:sleep 600 >/dev/null & printf x; exit 3")
    group = stream.proc.pid
    assert stream.read() == b"x"
    with pytest.raises(StreamFailed, match="exited with status 3"):
        stream.close()
    assert left_in_group(group, 15) == []
    assert alive_in_group(group) == []
