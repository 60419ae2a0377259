"""Ingest step against real Postgres and S3: counts, reasons, idempotency, refusals."""

import hashlib
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.errors import SchemaError, SourceError
from pipeline.steps import ingest
from pipeline.store import s3 as s3_store
from tests.conftest import REPO, TRAIN_CSV, TRAIN_SHA256, settings_env

pytestmark = pytest.mark.integration
HEADER = "PassengerId,Survived,Pclass,Name,Sex,Age,SibSp,Parch,Ticket,Fare,Cabin,Embarked"
ROW = '{pid},1,1,"Cumings, Mrs. John Bradley",female,38,1,0,PC 17599,71.2833,C85,C'


def write(tmp_path, *lines, name="batch.csv"):
    path = tmp_path / name
    path.write_text("\r\n".join(lines) + "\r\n")
    return str(path)


def count(db, table, where="true"):
    with db.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE {where}")
        return cur.fetchone()[0]


def test_train_csv_all_accepted_and_raw_kept(settings, db, s3):
    summary = ingest.run(settings, source=str(TRAIN_CSV), sha256=TRAIN_SHA256)
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_rejected"]) == (891, 891, 0)
    assert count(db, "passengers") == 891 and count(db, "passengers_rejected") == 0
    assert count(db, "passengers", "survived = 1") == 342
    bucket, key = s3_store.split_uri(summary["object_key"])
    assert bucket == settings.bucket_raw and summary["batch_id"] in key
    stored = s3_store.get_bytes(s3, bucket, key)
    assert hashlib.sha256(stored).hexdigest() == TRAIN_SHA256  # original bytes, CRLF and all


def test_rerun_is_a_no_op(settings, db):
    first = ingest.run(settings, source=str(TRAIN_CSV))
    with db.cursor() as cur:
        cur.execute("SELECT max(ingested_at), count(*) FROM passengers")
        before = cur.fetchone()
    second = ingest.run(settings, source=str(TRAIN_CSV))
    with db.cursor() as cur:
        cur.execute("SELECT max(ingested_at), count(*) FROM passengers")
        assert cur.fetchone() == before
    assert first["batch_id"] == second["batch_id"]


def test_later_batch_corrects_a_row(settings, db, tmp_path):
    ingest.run(settings, source=write(tmp_path, HEADER, ROW.format(pid=7)), batch_id="b1")
    fixed = ROW.format(pid=7).replace(",38,", ",39,")
    ingest.run(settings, source=write(tmp_path, HEADER, fixed, name="b2.csv"), batch_id="b2")
    with db.cursor() as cur:
        cur.execute("SELECT age, batch_id FROM passengers WHERE passenger_id = 7")
        assert cur.fetchone() == (39.0, "b2")


def test_broken_rows_are_kept_with_line_and_reason(settings, db, tmp_path):
    source = write(
        tmp_path,
        HEADER,
        ROW.format(pid=1),                                    # line 2: good
        ROW.format(pid=2).replace(",female,", ",woman,"),     # line 3: Sex
        ROW.format(pid=3).replace(",38,", ",150,"),           # line 4: Age out of range
        ROW.format(pid=4).replace(",1,0,PC", ",x,0,PC"),      # line 5: SibSp not a number
        ROW.format(pid=1),                                    # line 6: duplicate id
        '5,1,1,"Truncated, Mr. Row",male',                    # line 7: truncated
        ROW.format(pid=6).replace(",C85,C", ",C85,Z"),        # line 8: Embarked
        ROW.format(pid=8),                                    # line 9: good
    )
    summary = ingest.run(settings, source=source, batch_id="broken")
    assert (summary["rows_read"], summary["rows_accepted"], summary["rows_rejected"]) == (8, 2, 6)
    with db.cursor() as cur:
        cur.execute("SELECT line_number, reason, raw FROM passengers_rejected WHERE batch_id = 'broken' ORDER BY 1")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == [3, 4, 5, 6, 7, 8]
    reasons = [r[1] for r in rows]
    assert reasons[0].startswith("Sex:") and reasons[1].startswith("Age: must be between 0 and 100")
    assert reasons[2].startswith("SibSp: must be a number") and reasons[3].startswith("PassengerId: duplicate")
    assert reasons[4].startswith("truncated line") and reasons[5].startswith("Embarked:")
    assert "woman" in rows[0][2]  # the raw row is kept verbatim
    with db.cursor() as cur:
        cur.execute("SELECT passenger_id FROM passengers ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == [1, 8]


@pytest.mark.parametrize(
    "content, sha, error, message",
    [
        (b"", None, SchemaError, "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", None, SchemaError, "not a CSV"),
        (b"just some text without columns\n", None, SchemaError, "not a CSV"),
        ((HEADER.replace(",Fare", "") + "\n").encode(), None, SchemaError, "missing required columns: Fare"),
        ((HEADER + "\n" + ROW.format(pid=1) + "\n").encode(), "0" * 64, SourceError, "checksum mismatch"),
    ],
)
def test_refusals_write_nothing(settings, db, s3, tmp_path, content, sha, error, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(error, match=message):
        ingest.run(settings, source=str(path), sha256=sha)
    assert count(db, "passengers") == 0 and count(db, "passengers_rejected") == 0
    assert list(s3.list_objects(settings.bucket_raw, recursive=True)) == []


def test_unreachable_sources_are_refused(settings, db):
    with pytest.raises(SourceError, match="cannot read http://127.0.0.1:9/"):
        ingest.run(settings, source="http://127.0.0.1:9/train.csv")
    with pytest.raises(SourceError, match="cannot read s3://"):
        ingest.run(settings, source=f"s3://{settings.bucket_raw}/missing.csv")
    assert count(db, "passengers") == 0


def test_s3_source(settings, db, s3):
    s3_store.put_bytes(s3, settings.bucket_raw, "titanic/train.csv", TRAIN_CSV.read_bytes())
    summary = ingest.run(settings, source=f"s3://{settings.bucket_raw}/titanic/train.csv", sha256=TRAIN_SHA256)
    assert summary["rows_accepted"] == 891


def test_cli_prints_json_summary_last_and_exits_nonzero_on_refusal(settings, tmp_path):
    env = {**settings_env(settings), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--source", str(TRAIN_CSV)],
                        cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    import json

    assert json.loads(ok.stdout.strip().splitlines()[-1])["rows_accepted"] == 891
    bad = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--source", str(TRAIN_CSV), "--sha256", "0" * 64],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "checksum mismatch" in bad.stderr and bad.stdout == ""


def test_a_later_file_owns_all_its_rows_so_features_of_its_batch_cover_the_file(settings, db, tmp_path):
    """The DAG runs `features --batch <ingest's batch_id>`: a new file repeating known passengers must
    still give a feature set of the whole file, not only of the rows that changed."""
    from pipeline.steps import features

    ingest.run(settings, source=write(tmp_path, HEADER, *(ROW.format(pid=p) for p in (1, 2, 3))), batch_id="b1")
    with db.cursor() as cur:
        cur.execute("SELECT passenger_id, ingested_at FROM passengers ORDER BY 1")
        first_seen = dict(cur.fetchall())
    db.rollback()
    later = write(tmp_path, HEADER, *(ROW.format(pid=p) for p in (1, 2, 3, 4)), name="b2.csv")
    ingest.run(settings, source=later, batch_id="b2")

    assert list(features.load_passengers(db, "b2")["PassengerId"]) == [1, 2, 3, 4]
    with db.cursor() as cur:
        cur.execute("SELECT passenger_id, ingested_at FROM passengers WHERE passenger_id < 4 ORDER BY 1")
        assert dict(cur.fetchall()) == first_seen  # unchanged data: still first ingested then
    db.rollback()
    # and re-ingesting the same file stays a no-op
    ingest.run(settings, source=later, batch_id="b2")
    assert count(db, "passengers", "batch_id = 'b2'") == 4


def test_a_reused_batch_id_never_overwrites_raw_input(settings, s3, tmp_path):
    first = ingest.run(settings, source=write(tmp_path, HEADER, ROW.format(pid=1)), batch_id="manual")
    other = tmp_path / "other"
    other.mkdir()
    second = ingest.run(settings, source=write(other, HEADER, ROW.format(pid=2)), batch_id="manual")
    assert first["object_key"] != second["object_key"]  # same file name, same batch id, other bytes
    keys = sorted(o.object_name for o in s3.list_objects(settings.bucket_raw, recursive=True))
    assert len(keys) == 2 and all("/batches/manual/" in k for k in keys)


def test_non_finite_and_oversized_numbers_are_rejected_rows(settings, db, tmp_path):
    """inf or 3e9 used to abort the whole COPY; Infinity in Fare was stored and broke every later training."""
    source = write(
        tmp_path,
        HEADER,
        ROW.format(pid=1),                                           # line 2: good
        ROW.format(pid=2).replace(",1,0,PC", ",inf,0,PC"),           # line 3: SibSp
        ROW.format(pid=3000000000),                                  # line 4: PassengerId beyond integer
        ROW.format(pid=4).replace(",71.2833,", ",Infinity,"),        # line 5: Fare
        ROW.format(pid=5).replace(",1,0,PC", ",1,1e400,PC"),         # line 6: Parch (parses as inf)
        ROW.format(pid=6).replace(",38,", ",nan,"),                  # line 7: Age
        ROW.format(pid=7).replace(",38,", ",,").replace(",71.2833,", ",,"),  # line 8: unknown Age and Fare: fine
    )
    summary = ingest.run(settings, source=source, batch_id="nonfinite")
    assert (summary["rows_accepted"], summary["rows_rejected"]) == (2, 5)
    with db.cursor() as cur:
        cur.execute("SELECT line_number, reason FROM passengers_rejected ORDER BY 1")
        assert cur.fetchall() == [
            (3, "SibSp: must be a number, got 'inf'"),
            (4, "PassengerId: must be at most 2147483647, got '3000000000'"),
            (5, "Fare: must be a number, got 'Infinity'"),
            (6, "Parch: must be a number, got '1e400'"),
            (7, "Age: must be a number, got 'nan'"),
        ]
        cur.execute("SELECT passenger_id, age, fare FROM passengers ORDER BY 1")
        assert cur.fetchall() == [(1, 38.0, 71.2833), (7, None, None)]


def test_an_unlabelled_file_keeps_known_labels(settings, db, tmp_path):
    """A later unlabelled file repeating PassengerIds updates their data but never erases their label."""
    ingest.run(settings, source=write(tmp_path, HEADER, ROW.format(pid=1), ROW.format(pid=2)), batch_id="labelled")
    with db.cursor() as cur:
        cur.execute("SELECT ingested_at FROM passengers WHERE passenger_id = 1")
        first_seen = cur.fetchone()[0]
    db.rollback()
    unlabelled = HEADER.replace("Survived,", "")
    row = ROW.replace("{pid},1,", "{pid},")
    ingest.run(settings, source=write(tmp_path, unlabelled, row.format(pid=1), row.format(pid=2).replace(",38,", ",39,"),
                                      row.format(pid=3), name="new.csv"), batch_id="unlabelled")
    blank = write(tmp_path, HEADER, ROW.format(pid=2).replace(",1,1,", ",,1,").replace(",38,", ",39,"), name="blank.csv")
    ingest.run(settings, source=blank, batch_id="blank")  # a blank Survived is unlabelled too
    with db.cursor() as cur:
        cur.execute("SELECT passenger_id, survived, age, batch_id, ingested_at = %s FROM passengers ORDER BY 1", (first_seen,))
        assert cur.fetchall() == [(1, 1, 38.0, "unlabelled", True),  # same data: not even ingested_at moved
                                  (2, 1, 39.0, "blank", False),
                                  (3, None, 38.0, "unlabelled", False)]
    db.rollback()
    ingest.run(settings, source=write(tmp_path, HEADER, ROW.format(pid=1).replace(",1,1,", ",0,1,"), name="fix.csv"))
    assert count(db, "passengers", "passenger_id = 1 AND survived = 0") == 1  # a new label still wins


def test_an_oversized_field_is_a_rejected_row_and_the_rest_loads(settings, db, tmp_path):
    """One 200,000-character Name used to refuse the file ("field larger than field limit (131072)")."""
    huge = ROW.format(pid=2).replace("Cumings, Mrs. John Bradley", "x" * 200_000)
    summary = ingest.run(settings, source=write(tmp_path, HEADER, ROW.format(pid=1), huge, ROW.format(pid=3)),
                         batch_id="huge")
    assert (summary["rows_accepted"], summary["rows_rejected"]) == (2, 1)
    with db.cursor() as cur:
        cur.execute("SELECT line_number, reason, raw FROM passengers_rejected")
        [(line, reason, raw)] = cur.fetchall()
        assert (line, reason) == (3, "Name: must be at most 1000 characters, got 200000")
        assert "x" * 200_000 in raw  # the row is kept whole
        cur.execute("SELECT passenger_id FROM passengers ORDER BY 1")
        assert cur.fetchall() == [(1,), (3,)]


class _Handler(BaseHTTPRequestHandler):
    """train.csv at /sized/… (with Content-Length), /unsized/… (without: the size shows only while
    reading) and /hops/<n>/… (after n redirects)."""

    def do_GET(self):
        kind, arg, name = (self.path.strip("/").split("/") + ["", ""])[:3]
        if kind == "hops" and int(arg) > 0:
            self.send_response(302)
            self.send_header("Location", f"/hops/{int(arg) - 1}/{name}")
            self.end_headers()
            return
        body = TRAIN_CSV.read_bytes()
        self.send_response(200)
        if kind != "unsized":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # HTTP/1.0: without a length the body ends when the connection closes
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output to failures
        pass


@pytest.fixture(scope="module")
def web():
    """A real HTTP server on a free local port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_source_and_a_few_redirects(settings, web):
    assert ingest.run(settings, source=f"{web}/sized/0/train.csv", sha256=TRAIN_SHA256)["rows_accepted"] == 891
    assert ingest.run(settings, source=f"{web}/hops/3/train.csv")["rows_accepted"] == 891


def test_files_larger_than_the_limit_are_refused_and_nothing_is_written(settings, db, s3, web):
    size = TRAIN_CSV.stat().st_size
    small = settings.model_copy(update={"ingest_max_bytes": size - 1})
    s3_store.put_bytes(s3, settings.bucket_raw, "in/train.csv", TRAIN_CSV.read_bytes())
    declared = f"{size} bytes, more than the limit of {size - 1} bytes"
    for source, message in [
        (f"{web}/sized/0/train.csv", declared),                      # refused before reading
        (f"{web}/unsized/0/train.csv", f": more than the limit of {size - 1} bytes"),  # refused while reading
        (f"s3://{settings.bucket_raw}/in/train.csv", declared),
        (str(TRAIN_CSV), declared),
    ]:
        with pytest.raises(SourceError, match=re.escape(message)) as refused:
            ingest.run(small, source=source)
        assert source in str(refused.value) and "INGEST_MAX_BYTES" in str(refused.value)
    assert count(db, "passengers") == 0
    assert [o.object_name for o in s3.list_objects(settings.bucket_raw, recursive=True)] == ["in/train.csv"]
    exact = settings.model_copy(update={"ingest_max_bytes": size})
    assert ingest.run(exact, source=f"{web}/unsized/0/train.csv")["rows_accepted"] == 891


def test_redirect_chains_and_other_schemes_are_refused(settings, db, web):
    with pytest.raises(SourceError, match="Exceeded 3 redirects"):
        ingest.run(settings, source=f"{web}/hops/4/train.csv")
    with pytest.raises(SourceError, match=r"ftp:// is not supported; use http\(s\)://…, s3://bucket/key or a local path"):
        ingest.run(settings, source="ftp://example.org/train.csv")
    assert count(db, "passengers") == 0


def test_local_paths_are_refused_when_not_allowed(settings, db):
    cluster = settings.model_copy(update={"ingest_allow_local_paths": False})
    for source in (str(TRAIN_CSV), f"file://{TRAIN_CSV}"):
        with pytest.raises(SourceError, match=r"local paths are not allowed here \(INGEST_ALLOW_LOCAL_PATHS=false\)"):
            ingest.run(cluster, source=source)
    assert count(db, "passengers") == 0


def test_refusals_quote_at_most_80_printable_characters_of_the_file(settings, tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text("\x1b[2J" + "z" * 5000 + "\n")
    with pytest.raises(SchemaError) as refused:
        ingest.run(settings, source=str(path))
    assert str(refused.value) == f"not a CSV file: the header has no comma-separated columns ('?[2J{'z' * 76}…')"
    path.write_text(",".join(["y" * 300] * 5) + "\n")
    with pytest.raises(SchemaError, match="missing required columns") as refused:
        ingest.run(settings, source=str(path))
    assert len(str(refused.value)) < 300
