"""Atomic writes and folder locks (pipeline.files): concurrent writers never tear a file, a second writer of one
--out is refused, the user's own hidden .tmp files are never swept."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

from helpers import assert_one_line_error, run_cli

from pipeline.files import atomic_write


def test_a_second_writer_of_one_out_is_refused(tmp_path, runner, blob_store):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(out / '.pipeline.lock')!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "f.write('pipeline classify (pid 4242)'); f.flush(); print('locked', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run_cli(runner, "classify", "--features", blob_store, "--classifiers", "lda", "--grid", "quick",
                    "--out", out)
        assert_one_line_error(r, "is being written by pipeline classify (pid 4242)", "wait for it")
        assert_one_line_error(run_cli(runner, "report", "--out", out), "is being written by")
        assert not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    r = run_cli(runner, "classify", "--features", blob_store, "--classifiers", "lda", "--grid", "quick", "--out", out)
    assert r.exit_code == 0, r.output


def test_atomic_write_from_concurrent_writers_never_tears(tmp_path):
    path = tmp_path / "results.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 20000}) for i in range(4)]
    errors = []

    def write(text):
        try:
            for _ in range(30):
                atomic_write(path, text)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


def test_users_hidden_tmp_files_in_out_are_not_swept(tmp_path, runner, blob_store):
    out = tmp_path / "o"
    out.mkdir()
    mine = [out / ".notes.20240101.tmp", out / ".cache.download.tmp"]
    for p in mine:
        p.write_text("mine")
    r = run_cli(runner, "classify", "--features", blob_store, "--classifiers", "lda", "--grid", "quick", "--out", out)
    assert r.exit_code == 0, r.output
    assert all(p.read_text() == "mine" for p in mine)



def test_a_long_output_name_is_written_and_its_temporary_file_still_swept(tmp_path):
    """Issue 42 row 17: a 240-byte --out name failed with "File name too long": the temporary name added 27
    bytes. Now the temporary name is cut to fit (and told apart by a hash), and a killed writer's leftover of
    it is still found by the sweep."""
    import os

    long = tmp_path / ("é" * 100 + "x" * 40 + ".csv")  # 244 bytes in UTF-8
    atomic_write(long, "a,b\n")
    assert long.read_text() == "a,b\n" and os.listdir(tmp_path) == [long.name]
    from pipeline.files import TMP_TAG, _tmp_stem, remove_stale_tmp

    left = tmp_path / f".{_tmp_stem(long.name)}{TMP_TAG}abcd1234.tmp"
    left.write_text("half")
    assert len(os.fsencode(left.name)) <= 255
    remove_stale_tmp(tmp_path)
    assert os.listdir(tmp_path) == [long.name]
    assert _tmp_stem(long.name) != _tmp_stem(long.name[:-5] + "y.csv")  # cut alike, still told apart
